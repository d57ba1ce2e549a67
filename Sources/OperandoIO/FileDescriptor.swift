#if canImport(Glibc)
import Glibc
#endif

/// An owned POSIX file descriptor with the few operations the daemon needs. Not copyable by
/// convention: whoever holds it closes it once.
public struct FileDescriptor: Sendable, Hashable {
    public let rawValue: Int32
    public init(rawValue: Int32) { self.rawValue = rawValue }

    /// Opens `path` with `open(2)` flags (O_CLOEXEC is always added).
    public static func open(_ path: String, flags: Int32, mode: mode_t = 0o644) throws(Errno) -> FileDescriptor {
        let fd = try retryingOnInterrupt { Glibc.open(path, flags | O_CLOEXEC, mode) }
        return FileDescriptor(rawValue: fd)
    }

    public func close() { _ = Glibc.close(rawValue) }

    /// Writes all bytes (looping over short writes).
    public func writeAll(_ buffer: UnsafeRawBufferPointer) throws(Errno) {
        var offset = 0
        while offset < buffer.count {
            let n = try retryingOnInterrupt { Glibc.write(rawValue, buffer.baseAddress! + offset, buffer.count - offset) }
            offset += n
        }
    }

    public func writeAll(_ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { try writeAll($0) }
    }

    /// Writes every byte of `parts` with `writev(2)`, looping over short writes.
    public func writeAll(_ parts: [UnsafeRawBufferPointer]) throws(Errno) {
        var iov = parts.filter { $0.count > 0 }.map { iovec(iov_base: UnsafeMutableRawPointer(mutating: $0.baseAddress), iov_len: $0.count) }
        var index = 0
        while index < iov.count {
            let n = try iov.withUnsafeMutableBufferPointer { (buf) throws(Errno) in
                try retryingOnInterrupt { Glibc.writev(rawValue, buf.baseAddress! + index, Int32(min(buf.count - index, 1024))) }
            }
            var left = n
            while left > 0 && index < iov.count {
                if left >= iov[index].iov_len {
                    left -= iov[index].iov_len
                    index += 1
                } else {
                    iov[index].iov_base += left
                    iov[index].iov_len -= left
                    left = 0
                }
            }
        }
    }

    /// Reads up to `buffer.count` bytes; 0 at end of file.
    public func read(into buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int {
        try retryingOnInterrupt { Glibc.read(rawValue, buffer.baseAddress, buffer.count) }
    }

    /// `fdatasync(2)`: the data written so far is on stable storage when this returns.
    public func dataSync() throws(Errno) { try retryingOnInterrupt { Glibc.fdatasync(rawValue) } }
    /// `fsync(2)`.
    public func sync() throws(Errno) { try retryingOnInterrupt { Glibc.fsync(rawValue) } }

    /// ftruncate(2): cuts the file to `size` bytes.
    public func truncate(to size: Int) throws(Errno) { try retryingOnInterrupt { Glibc.ftruncate(rawValue, off_t(size)) } }


    /// Waits until readable (or `timeoutMilliseconds` passes). True when readable or hung up.
    public func pollReadable(timeoutMilliseconds: Int32) throws(Errno) -> Bool {
        var p = pollfd(fd: rawValue, events: Int16(POLLIN), revents: 0)
        while true {
            let r = Glibc.poll(&p, 1, timeoutMilliseconds)
            if r >= 0 { return r > 0 }
            if errno != EINTR { throw Errno.current }
        }
    }

    public func setNonBlocking(_ on: Bool) throws(Errno) {
        let flags = try retryingOnInterrupt { fcntl(rawValue, F_GETFL) }
        try retryingOnInterrupt { fcntl(rawValue, F_SETFL, on ? flags | O_NONBLOCK : flags & ~O_NONBLOCK) }
    }
}

/// Small file-system helpers used by the store and the daemon.
public enum FileSystem {
    /// Creates `path` and its parents (mode 0755 by default); fine if it exists.
    public static func makeDirectories(_ path: String, mode: mode_t = 0o755) throws(Errno) {
        var current = path.hasPrefix("/") ? "" : "."
        for part in path.split(separator: "/") {
            current += "/" + part
            if mkdir(current, mode) != 0 && errno != EEXIST { throw Errno.current }
        }
    }

    /// fsyncs a directory so that entries created in it survive a power loss.
    public static func syncDirectory(_ path: String) throws(Errno) {
        let fd = try FileDescriptor.open(path, flags: O_RDONLY | O_DIRECTORY)
        defer { fd.close() }
        try fd.sync()
    }

    /// Writes `bytes` to `path` atomically: a temporary file, fsync, rename, directory fsync.
    public static func writeAtomically(_ path: String, bytes: [UInt8]) throws {
        let tmp = path + ".tmp"
        let fd = try FileDescriptor.open(tmp, flags: O_WRONLY | O_CREAT | O_TRUNC)
        do {
            try fd.writeAll(bytes)
            try fd.sync()
        } catch {
            fd.close()
            throw error
        }
        fd.close()
        try retryingOnInterrupt { rename(tmp, path) }
        let dir = path.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
        try syncDirectory(dir.isEmpty ? "." : dir)
    }

    public static func readAll(_ path: String) throws -> [UInt8] {
        let fd = try FileDescriptor.open(path, flags: O_RDONLY)
        defer { fd.close() }
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let n = try chunk.withUnsafeMutableBytes { try fd.read(into: $0) }
            if n == 0 { return out }
            out.append(contentsOf: chunk[0..<n])
        }
    }

    public static func exists(_ path: String) -> Bool { access(path, F_OK) == 0 }

    /// Names in a directory, sorted, without "." and "..".
    public static func list(_ path: String) throws(Errno) -> [String] {
        guard let dir = opendir(path) else { throw Errno.current }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name != "." && name != ".." { names.append(name) }
        }
        return names.sorted()
    }

    /// Bytes available to an unprivileged writer on the file system holding `path`.
    public static func freeBytes(_ path: String) throws(Errno) -> Int {
        var st = statvfs()
        try retryingOnInterrupt { statvfs(path, &st) }
        return Int(st.f_bavail) * Int(st.f_frsize)
    }
}

extension FileDescriptor {
    /// Creates (or truncates) a file for writing.
    public static func createTruncating(_ path: String) throws(Errno) -> FileDescriptor {
        try open(path, flags: O_WRONLY | O_CREAT | O_TRUNC)
    }
}
