set(FEDGE_BENCH_LIBS fedge_aggregator CLI11::CLI11)
