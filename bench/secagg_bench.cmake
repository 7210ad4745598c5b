# fedge_bench_secagg: the secure-aggregation protocol in-process (fedge_secagg only).
set(FEDGE_BENCH_LIBS fedge_secagg)
