# `cmake --install build [--prefix P]`: the fedra CLI, the shared libraries, the public headers a
# strategy author needs, and a CMake package, so that an outside project does
#   find_package(Fedra REQUIRED)
#   target_link_libraries(my_plugin PRIVATE fedra::sdk)
# (docs/plugins.md). Internal headers (Coordinator, Worker, TCP channels, process helpers) are not
# installed.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set_target_properties(fedra_transport PROPERTIES EXPORT_NAME transport)
set_target_properties(fedra_core PROPERTIES EXPORT_NAME core)
set_target_properties(fedra_strategies PROPERTIES EXPORT_NAME strategies)
# Installed binaries and libraries find their libraries next door.
set_target_properties(fedra fedra_transport fedra_core fedra_strategies PROPERTIES
  INSTALL_RPATH "$ORIGIN/../${CMAKE_INSTALL_LIBDIR}")

install(TARGETS fedra RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(TARGETS fedra_transport fedra_core fedra_strategies EXPORT FedraTargets
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR})
install(EXPORT FedraTargets NAMESPACE fedra:: DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/Fedra)

# The public headers: what core/kit/plugin.h, core/loops/round_strategy.h and the helpers a strategy uses
# include, and nothing else.
set(FEDRA_PUBLIC_HEADERS
  core/federated/aggregation.h core/data/batching.h core/loops/cohort.h core/data/dataset.h core/kit/message.h core/model/model.h core/model/state.h core/model/export.h
  core/kit/error.h core/training/optimizer.h core/kit/option_groups.h core/kit/options.h core/kit/plugin.h core/kit/registry.h
  core/federated/privacy.h core/federated/robust_aggregation.h core/loops/round_strategy.h core/federated/server_optimizer.h core/loops/stepped_strategy.h core/loops/inbox.h
  core/kit/strategy.h core/data/tensor_checks.h core/training/training.h core/federated/secagg.h core/federated/fleet.h core/net/peer.h
  transport/codec.h transport/error.h
  strategies/fedavg/fedavg.h strategies/fedavg/secagg.h)
foreach(header ${FEDRA_PUBLIC_HEADERS})
  get_filename_component(dir ${header} DIRECTORY)
  install(FILES ${header} DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/fedra/${dir})
endforeach()

configure_package_config_file(cmake/FedraConfig.cmake.in ${PROJECT_BINARY_DIR}/FedraConfig.cmake
  INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/Fedra)
write_basic_package_version_file(${PROJECT_BINARY_DIR}/FedraConfigVersion.cmake
  VERSION ${PROJECT_VERSION} COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/FedraConfig.cmake ${PROJECT_BINARY_DIR}/FedraConfigVersion.cmake
  cmake/FedraPlugin.cmake DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/Fedra)
