# Sourced by scripts/package and scripts/bench: can this machine build the static musl binary
# that is deployed? Both need the `musl` variable (the rust target triple).
musl="${musl:-x86_64-unknown-linux-musl}"

musl_std_installed() {
  local libdir
  libdir="$(rustc --print target-libdir --target "$musl" 2>/dev/null)" || return 1
  compgen -G "$libdir/libstd-*.rlib" >/dev/null
}

musl_cc() {
  # cc-rs uses CC_<target> when set, else looks for musl-gcc.
  [[ -n "${CC_x86_64_unknown_linux_musl:-}" ]] && return 0
  command -v musl-gcc >/dev/null && return 0
  if command -v x86_64-linux-musl-gcc >/dev/null; then
    export CC_x86_64_unknown_linux_musl=x86_64-linux-musl-gcc
    return 0
  fi
  return 1
}
