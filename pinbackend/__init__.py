"""pinbackend: static multiprocessing for joblib, scikit-learn and Dask.

Each parallel worker gets a disjoint set of CPU cores, its BLAS/OpenMP/TBB thread pools are
capped to that set's size, and nested parallelism cannot oversubscribe the machine.
"""

__version__ = "0.1.0"
