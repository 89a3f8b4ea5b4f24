# Reads `perf report --sort dso,sym --stdio -q` of one server; prints the percentages of its samples as
# "kernel libc guest binary wasmtime tokio hyper own std other". The first four split them by where they
# fall: the kernel, the C library (with the vDSO), the guest's compiled code (wasmhttp's mapped compile-cache
# file, `wasmtime serve`'s JIT code) and the server's own binary. The last six split the binary's by the
# crate each symbol is named for: wasmtime (the engine, cranelift, wiggle and wasmtime's WASI crates), tokio
# (with futures, mio), hyper (with http, httparse, bytes), the server's own crates (wasmhttp's, `wasmtime
# serve`'s CLI, native-hello), the standard library, and the rest. A generic function of the standard
# library (drop_in_place, Arc, Vec) counts for the first other crate in its name, the one it was made for;
# code inlined across crates counts for the function it was inlined into. Used by bench/http-split.sh.
function crate_of(s,   c, inner) {
  sub(/^[<&*( ]+/, "", s)
  sub(/^(mut |dyn |const )+/, "", s)
  c = s
  sub(/::.*/, "", c)
  sub(/[^A-Za-z0-9_].*/, "", c)
  if (c ~ /^(core|alloc|std)$/ && match(substr(s, length(c) + 1), /[<, &]+[a-z][a-z0-9_]*::/)) {
    inner = substr(s, length(c) + RSTART, RLENGTH)
    gsub(/[<, &]/, "", inner)
    sub(/::$/, "", inner)
    if (inner !~ /^(core|alloc|std)$/) c = inner
  }
  return c
}
{
  pct = $1 + 0
  dso = $2
  if (dso == "[kernel.kallsyms]") { kernel += pct; next }
  if (dso ~ /^(libc|libm|libgcc_s|ld-linux)/ || dso == "[vdso]") { libc += pct; next }
  if (dso ~ /\.cwasm$/ || dso == "[JIT]") { guest += pct; next }
  binary += pct
  sym = $0
  sub(/^[^]]*\] /, "", sym)
  c = crate_of(sym)
  if (c ~ /^(wasmhttp|wasmtime_cli|native_hello)/) own += pct
  else if (c ~ /^(wasmtime|cranelift|wiggle|wasmparser|wasm_encoder|pulley)/) engine += pct
  else if (c ~ /^(tokio|futures|mio)/) rt += pct
  else if (c ~ /^(hyper|http|httparse|bytes)/) http += pct
  else if (c ~ /^(core|alloc|std)$/) lib += pct
  else other += pct
}
END {
  printf "%.2f %.2f %.2f %.2f %.2f %.2f %.2f %.2f %.2f %.2f\n", kernel, libc, guest, binary, engine, rt, http,
    own, lib, other
}
