# Drives the real fedge-aggregator binary (build it too) with simulated agents;
# the streaming-memory check runs the aggregator library in-process.
set(FEDGE_BENCH_LIBS fedge_aggregator fedge_proto gRPC::grpc++ CLI11::CLI11 Threads::Threads)
