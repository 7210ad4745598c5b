# The byte-level BPE tokenizer is torch-free: compile its sources here instead of
# linking fedge_agent_model (and libtorch) into a tokenizer benchmark.
if(NOT TARGET fedge_agent_model)
  set(FEDGE_BENCH_SKIP TRUE)
else()
  if(NOT TARGET fedge_bench_tokenizer_code)
    add_library(fedge_bench_tokenizer_code STATIC
      ${PROJECT_SOURCE_DIR}/agent/src/model/tokenizer/bpe_tokenizer.cpp
      ${PROJECT_SOURCE_DIR}/agent/src/model/tokenizer/unicode_normalize.cpp
      ${PROJECT_SOURCE_DIR}/agent/src/model/llama/json_grammar.cpp
      ${PROJECT_SOURCE_DIR}/agent/src/model/llama/json_schema.cpp)
    target_include_directories(fedge_bench_tokenizer_code
      PUBLIC ${PROJECT_SOURCE_DIR}/agent/include PRIVATE ${PROJECT_SOURCE_DIR}/agent/src/model)
    target_link_libraries(fedge_bench_tokenizer_code PUBLIC fedge_common PRIVATE fedge_warnings nlohmann_json::nlohmann_json)
  endif()
  set(FEDGE_BENCH_LIBS fedge_bench_tokenizer_code)
  set(FEDGE_BENCH_INCLUDES ${PROJECT_SOURCE_DIR}/agent/src/model)
endif()
