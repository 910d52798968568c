#!/usr/bin/env bash
# Build a free-threaded CPython (./configure --disable-gil) from Debian's source package and
# cache it outside the repo; print the interpreter's path as the last line of stdout.
#
#   tools/free_threaded_python.sh              build if not cached, print the path
#   tools/free_threaded_python.sh --cached     print the path if cached, else exit 3
#   tools/free_threaded_python.sh --venv DIR   build if not cached, then make DIR a virtual
#                                              environment of it (kept if it already is one)
#
# Idempotent: a finished build is reused without touching the network. Two runs at once
# (two tox runs, two users of one cache) take turns on a lock; the second finds it built.
#
# Environment:
#   PINBACKEND_FT_SERIES  CPython series, default 3.13 (3.14 where its source can be had)
#   PINBACKEND_FT_SUITE   Debian suite to take the source from, default "stable"
#   PINBACKEND_FT_MIRROR  Debian mirror, default http://deb.debian.org/debian
#   PINBACKEND_FT_CACHE   cache folder, default ${XDG_CACHE_HOME:-~/.cache}/pinbackend
#
# Why apt with private state: `apt-get source` needs a deb-src entry; writing one into
# /etc/apt would need root and change the machine for everyone. apt reads the entry, its
# index and its download cache from folders under our cache instead (no root needed).
# Why only the series' *.patch files: Debian's *.diff patches move files into Debian's
# layout (multiarch, dist-packages, no ensurepip) and assume its build; the *.patch ones are
# its security and crash fixes, which we want.
set -euo pipefail

series="${PINBACKEND_FT_SERIES:-3.13}"
suite="${PINBACKEND_FT_SUITE:-stable}"
mirror="${PINBACKEND_FT_MIRROR:-http://deb.debian.org/debian}"
cache="${PINBACKEND_FT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pinbackend}"
root="$cache/python${series}t"
exe_name="python${series}t"

say() { echo "free_threaded_python: $*" >&2; }
die() { say "error: $*"; exit "${2:-1}"; }

cached_exe() {
    # The newest finished build of the series (a build is finished once its stamp exists).
    local stamp
    stamp=$(ls -1d "$root"/*/.built 2>/dev/null | sort -V | tail -n 1 || true)
    [[ -n "$stamp" ]] && echo "$(dirname "$stamp")/bin/$exe_name"
}

venv=""
case "${1:-}" in
    "") ;;
    --cached)
        exe=$(cached_exe) || true
        [[ -n "$exe" ]] || exit 3
        echo "$exe"
        exit 0
        ;;
    --venv)
        [[ -n "${2:-}" ]] || die "--venv needs a folder" 2
        venv="$2"
        ;;
    *) die "unknown argument '$1'; allowed: none, --cached, or --venv DIR" 2 ;;
esac

finish() {
    # Print the interpreter, or make the virtual environment and print its interpreter.
    local exe="$1"
    if [[ -z "$venv" ]]; then
        echo "$exe"
        exit 0
    fi
    # A venv made by another interpreter (an older build, another series) is made anew.
    if [[ "$(sed -n 's/^executable = //p' "$venv/pyvenv.cfg" 2>/dev/null)" != "$exe" ]]; then
        rm -rf "$venv"
        "$exe" -m venv "$venv" >&2
        say "made the virtual environment $venv of $exe"
    fi
    echo "$venv/bin/python"
    exit 0
}

exe=$(cached_exe) || true
if [[ -n "$exe" ]]; then
    say "using the cached build $exe"
    finish "$exe"
fi

for tool in apt-get apt-cache dpkg-source make cc flock; do
    command -v "$tool" >/dev/null || die "'$tool' not found: this script needs a Debian-like \
system with build-essential and dpkg-dev (apt-get install build-essential dpkg-dev), or a \
free-threaded CPython built otherwise, put at $root/VERSION/bin/$exe_name with an empty \
$root/VERSION/.built"
done

mkdir -p "$root"
exec 9>"$root/.lock"
say "waiting for the build lock $root/.lock"
flock 9
# Another run may have finished the build while we waited.
exe=$(cached_exe) || true
if [[ -n "$exe" ]]; then
    say "using the cached build $exe"
    finish "$exe"
fi

start=$(date +%s)
apt_dir="$root/apt"
mkdir -p "$apt_dir/sources" "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
cat >"$apt_dir/sources/pinbackend-src.sources" <<EOF
Types: deb-src
URIs: $mirror
Suites: $suite
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
apt_opts=(
    -o "Dir::Etc::SourceList=/dev/null"
    -o "Dir::Etc::SourceParts=$apt_dir/sources"
    -o "Dir::State::Lists=$apt_dir/lists"
    -o "Dir::Cache=$apt_dir/cache"
    -o "APT::Sandbox::User=root"
)
say "reading the source index of Debian '$suite' from $mirror"
# --error-on=any: apt-get update otherwise exits 0 when no index could be fetched.
if ! apt-get "${apt_opts[@]}" -q --error-on=any update >&2; then
    die "could not read Debian's source index ($mirror, suite '$suite'): the apt sources are \
unreachable from here. Give the machine network access to the mirror, set \
PINBACKEND_FT_MIRROR to one it can reach, or build a free-threaded CPython elsewhere and \
put it at $root/VERSION/bin/$exe_name with an empty $root/VERSION/.built"
fi
pkg="python$series"
version=$( (apt-cache "${apt_opts[@]}" showsrc "$pkg" 2>/dev/null || true) \
    | sed -n 's/^Version: //p' | sort -V | tail -n 1)
[[ -n "$version" ]] || die "Debian '$suite' has no source package '$pkg'; set \
PINBACKEND_FT_SERIES to a series it carries (3.13 in trixie) or PINBACKEND_FT_SUITE to a suite \
that has it"
upstream="${version%%-*}"
upstream="${upstream#*:}"
prefix="$root/$upstream"
work="$root/build-$upstream"
rm -rf "$work" "$prefix"
mkdir -p "$work"
say "downloading the source of $pkg $version"
if ! (cd "$work" && apt-get "${apt_opts[@]}" -q source --download-only "$pkg=$version" >&2); then
    die "could not download the source of $pkg $version from $mirror (suite '$suite'); \
the mirror may have dropped it: run again later, or set PINBACKEND_FT_MIRROR"
fi
(cd "$work" && dpkg-source --skip-patches -x ./*.dsc src >&2)
src="$work/src"
# Debian's fixes (see the top of this file); a fix that no longer applies is skipped aloud.
grep -E '^[^#].*\.patch$' "$src/debian/patches/series" | while read -r patch; do
    if ! patch -d "$src" -p1 --forward --batch --silent <"$src/debian/patches/$patch" >&2; then
        say "warning: Debian's $patch did not apply; built without it"
    fi
done
jobs=$(nproc 2>/dev/null || echo 2)
say "configuring and building with --disable-gil on $jobs cores (no PGO, no LTO)"
(
    cd "$src"
    ./configure --disable-gil --prefix="$prefix" --with-ensurepip=install >"$work/configure.log" 2>&1 \
        || { tail -n 30 "$work/configure.log" >&2; exit 1; }
    make -j"$jobs" >"$work/make.log" 2>&1 || { tail -n 40 "$work/make.log" >&2; exit 1; }
    make install >"$work/install.log" 2>&1 || { tail -n 40 "$work/install.log" >&2; exit 1; }
) || die "the build failed; its logs are in $work"
"$prefix/bin/$exe_name" -c 'import sys, ssl, ctypes, sqlite3; assert not sys._is_gil_enabled()' \
    || die "the built $prefix/bin/$exe_name is not usable (no GIL, ssl, ctypes); logs in $work"
touch "$prefix/.built"
rm -rf "$work"
say "built $pkg $version (free-threaded) in $(( $(date +%s) - start )) s"
finish "$prefix/bin/$exe_name"
