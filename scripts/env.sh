# Sourced by the scripts: puts a Swift toolchain on PATH if it is installed in /opt/swift.
if ! command -v swift >/dev/null && [ -x /opt/swift/usr/bin/swift ]; then
  export PATH="/opt/swift/usr/bin:$PATH"
fi
