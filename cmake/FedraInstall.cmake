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

# The public headers: include/fedra/*.h, what a plugin includes (docs/plugins.md), installed as
# PREFIX/include/fedra/NAME.h; and the headers they include, by room: the strategy kit and its
# loops, data, models, training, federated building blocks, worker links, the transport's codec,
# and FedAvg's classes and parts. The runtime (coordinator, worker, TCP cohort, processes) is not.
file(GLOB FEDRA_SDK_HEADERS RELATIVE ${PROJECT_SOURCE_DIR}/include/fedra ${PROJECT_SOURCE_DIR}/include/fedra/*.h)
foreach(header ${FEDRA_SDK_HEADERS})
  install(FILES include/fedra/${header} DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/fedra)
endforeach()
set(FEDRA_PUBLIC_HEADERS core/net/peer.h transport/channel.h transport/codec.h transport/endpoint.h
    transport/error.h)
foreach(room core/kit core/loops core/data core/model core/training core/federated strategies/fedavg)
  file(GLOB headers RELATIVE ${PROJECT_SOURCE_DIR} ${PROJECT_SOURCE_DIR}/${room}/*.h)
  list(APPEND FEDRA_PUBLIC_HEADERS ${headers})
endforeach()
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
