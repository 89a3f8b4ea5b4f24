# Sourced by the benchmarks (through bench/lib.sh and bench/containerd.sh): the one median they all use.
# median_of: the median of the numbers on stdin, one per line, unrounded (ratios); with an even count, the
# mean of the middle two. median: the same to one decimal (milliseconds, req/s in prose).
median_of() { sort -g | awk '{v[NR]=$1} END {if (NR) printf "%.10g\n", (NR % 2) ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2}'; }
median() { printf '%.1f' "$(median_of)"; }
