# fedra_add_plugin(NAME SOURCES...): a strategy plugin, the shared module `fedra --plugin` loads,
# built as C++17 against fedra::sdk. Installed with the SDK; Fedra's own tree includes it too.
function(fedra_add_plugin name)
  add_library(${name} MODULE ${ARGN})
  target_compile_features(${name} PRIVATE cxx_std_17)
  target_link_libraries(${name} PRIVATE fedra::sdk)
endfunction()
