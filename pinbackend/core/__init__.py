"""Pure core: read a machine's topology and plan disjoint core sets. No side effects."""
