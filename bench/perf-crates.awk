# Reads `perf report --sort dso,sym --stdio -q` of one server; prints the percentages of all its samples
# that fall in its own binary, by the crate each symbol is named for, as "wasmtime tokio hyper own std
# other": wasmtime (the engine, cranelift, wiggle and wasmtime's WASI crates), tokio (with futures, mio),
# hyper (with http, httparse, bytes), the server's own crates (wasmhttp's, `wasmtime serve`'s CLI,
# native-hello), the standard library, and the rest. A generic function of the standard library
# (drop_in_place, Arc, Vec) counts for the first other crate in its name, the one it was made for. Code
# inlined across crates counts for the function it was inlined into. Used by bench/http-split.sh.
function crate_of(s,   c, rest) {
  sub(/^[<&*( ]+/, "", s)
  sub(/^(mut |dyn |const )+/, "", s)
  c = s
  sub(/::.*/, "", c)
  sub(/[^A-Za-z0-9_].*/, "", c)
  if (c ~ /^(core|alloc|std)$/ && match(substr(s, length(c) + 1), /[<, &]+[a-z][a-z0-9_]*::/)) {
    rest = substr(s, length(c) + RSTART, RLENGTH)
    gsub(/[<, &]/, "", rest)
    sub(/::$/, "", rest)
    if (rest !~ /^(core|alloc|std)$/) c = rest
  }
  return c
}
{
  pct = $1 + 0
  dso = $2
  # The same split as http-split.sh's: only the binary's samples are counted here.
  if (dso == "[kernel.kallsyms]" || dso == "[vdso]" || dso ~ /^(libc|libm|libgcc_s|ld-linux)/ ||
    dso ~ /\.cwasm$/ || dso ~ /^\[JIT\]/) next
  sym = $0
  sub(/^[^]]*\] /, "", sym)
  c = crate_of(sym)
  if (c ~ /^(wasmhttp|wasmtime_cli|native_hello)/) own += pct
  else if (c ~ /^(wasmtime|cranelift|wiggle|wasmparser|wasm_encoder|pulley)/) engine += pct
  else if (c ~ /^(tokio|futures|mio)/) rt += pct
  else if (c ~ /^(hyper|http|httparse|bytes)/) http += pct
  else if (c ~ /^(core|alloc|std)$/) lib += pct
  else rest += pct
}
END { printf "%.2f %.2f %.2f %.2f %.2f %.2f\n", engine, rt, http, own, lib, rest }
