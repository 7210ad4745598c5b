# fedge_bench_decode needs the libtorch agent model (llama/llama.h).
# Added by the bench/CMakeLists.txt owner so the glob build stays green; owner: model engineer.
if(NOT TARGET fedge_agent_model)
  set(FEDGE_BENCH_SKIP TRUE)
endif()
set(FEDGE_BENCH_INCLUDES ${PROJECT_SOURCE_DIR}/agent/src/model)
set(FEDGE_BENCH_LIBS fedge_agent_model ${TORCH_LIBRARIES} CLI11::CLI11)
