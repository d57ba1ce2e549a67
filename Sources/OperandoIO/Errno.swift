#if canImport(Glibc)
import Glibc
#endif

/// A POSIX error number, as returned in `errno`.
public struct Errno: Error, Equatable, Sendable, CustomStringConvertible {
    public var rawValue: Int32
    public init(rawValue: Int32) { self.rawValue = rawValue }

    /// The calling thread's current `errno`.
    public static var current: Errno { Errno(rawValue: errno) }

    /// EAGAIN / EWOULDBLOCK: try again later.
    public static let wouldBlock = Errno(rawValue: EAGAIN)
    /// EINTR: interrupted by a signal.
    public static let interrupted = Errno(rawValue: EINTR)
    /// ETIMEDOUT.
    public static let timedOut = Errno(rawValue: ETIMEDOUT)

    public var description: String { String(cString: strerror(rawValue)) + " (errno \(rawValue))" }
}

/// Runs a system call, retrying on EINTR (the one place that handles it), throwing `Errno` on -1.
@discardableResult
@inline(__always)
public func retryingOnInterrupt<T: FixedWidthInteger>(_ call: () -> T) throws(Errno) -> T {
    while true {
        let r = call()
        if r != -1 { return r }
        let e = Errno.current
        if e != .interrupted { throw e }
    }
}
