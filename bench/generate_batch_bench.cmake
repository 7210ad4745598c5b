# fedge_bench_generate_batch drives the agent's RequestScheduler (runtime) over a
# Llama written with llama/llama.h (model internals).
if(NOT TARGET fedge_agent_runtime)
  set(FEDGE_BENCH_SKIP TRUE)
endif()
set(FEDGE_BENCH_INCLUDES ${PROJECT_SOURCE_DIR}/agent/src/model)
set(FEDGE_BENCH_LIBS fedge_agent_runtime fedge_agent_model ${TORCH_LIBRARIES} CLI11::CLI11)
