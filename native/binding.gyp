{
  "targets": [
    {
      "target_name": "virtq_native",
      "sources": [
        "src/addon.cc",
        "src/common.cc",
        "src/eventfd.cc",
        "src/memory.cc",
        "src/socket.cc",
        "src/tun.cc",
        "src/watch.cc"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": [
        "NAPI_VERSION=8",
        "NAPI_DISABLE_CPP_EXCEPTIONS",
        "NODE_ADDON_API_DISABLE_DEPRECATED"
      ],
      "cflags_cc": ["-Wall", "-Wextra", "-Wno-unused-parameter"]
    }
  ]
}
