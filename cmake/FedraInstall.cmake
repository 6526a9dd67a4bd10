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

# The public headers: what core/plugin.h, core/round_strategy.h and the helpers a strategy uses
# include, and nothing else.
set(FEDRA_PUBLIC_HEADERS
  core/aggregation.h core/batching.h core/cohort.h core/dataset.h core/message.h core/model.h
  core/error.h core/optimizer.h core/option_groups.h core/options.h core/plugin.h core/registry.h
  core/privacy.h core/robust_aggregation.h core/round_strategy.h core/server_optimizer.h core/stepped_strategy.h core/inbox.h core/local_cohort.h
  core/strategy.h core/tensor_checks.h core/training.h core/secagg.h core/fleet.h core/peer.h
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
