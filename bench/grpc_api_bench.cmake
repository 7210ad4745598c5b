# gRPC's callback API against its async completion-queue API on fedge's own
# messages (no fedge logic): a server in a forked child, the load in-process.
set(FEDGE_BENCH_LIBS fedge_proto gRPC::grpc++ CLI11::CLI11 Threads::Threads)
