# CPU-only build through node-gyp (used by prebuildify's default backend and as a fallback when
# cmake is unavailable). The source list is native/sources.json, shared with CMakeLists.txt.
{
  "targets": [
    {
      "target_name": "llama2_native",
      "sources": [
        "<!@(node -p \"const s=require('./native/sources.json'); s.core.concat(s.cpu_only).join(' ')\")"
      ],
      "include_dirs": [
        "<!(node -p \"require('node-addon-api').include_dir\")",
        "."
      ],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS", "NODE_ADDON_API_DISABLE_DEPRECATED"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-fno-rtti"],
      "cflags_cc": ["-std=c++17", "-O3", "-fexceptions"]
    }
  ]
}
