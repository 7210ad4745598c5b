# Drives the real fedge-aggregator binary (built first) with simulated agents.
set(FEDGE_BENCH_LIBS fedge_proto gRPC::grpc++ CLI11::CLI11 Threads::Threads)
