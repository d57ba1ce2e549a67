#if canImport(Glibc)
import Glibc
#endif

/// The sd_notify protocol, spoken directly: datagrams to the AF_UNIX socket named by
/// NOTIFY_SOCKET (a leading "@" means the abstract namespace). Without NOTIFY_SOCKET every call
/// is a no-op, so the daemon runs the same way outside systemd.
public final class SystemdNotifier: @unchecked Sendable {
    private let socketPath: String?
    /// Half of WATCHDOG_USEC, the interval at which WATCHDOG=1 must be sent; nil when no watchdog.
    public let watchdogInterval: Duration?

    public init(environment: [String: String]) {
        socketPath = environment["NOTIFY_SOCKET"].flatMap { $0.isEmpty ? nil : $0 }
        if let usec = environment["WATCHDOG_USEC"].flatMap(Int64.init), usec > 0,
            environment["WATCHDOG_PID"].map({ Int32($0) == getpid() }) ?? true
        {
            watchdogInterval = .microseconds(usec / 2)
        } else {
            watchdogInterval = nil
        }
    }

    public var isEnabled: Bool { socketPath != nil }

    /// Sends `state` (e.g. "READY=1", "STATUS=recording run-3"). Errors are returned, not thrown:
    /// a missing supervisor must never stop the daemon.
    @discardableResult
    public func notify(_ state: String) -> Errno? {
        guard let socketPath else { return nil }
        let s = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard s >= 0 else { return .current }
        defer { close(s) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        var pathBytes = Array(socketPath.utf8)
        if pathBytes.first == UInt8(ascii: "@") { pathBytes[0] = 0 }
        guard pathBytes.count < MemoryLayout.size(ofValue: addr.sun_path) else { return Errno(rawValue: ENAMETOOLONG) }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in pathBytes.enumerated() { raw[i] = b }
        }
        let length = socklen_t(MemoryLayout<sa_family_t>.size + pathBytes.count + (pathBytes.first == 0 ? 0 : 1))
        let message = Array(state.utf8)
        let rc = withUnsafePointer(to: &addr) { a in
            a.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                message.withUnsafeBytes { sendto(s, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL), sa, length) }
            }
        }
        return rc < 0 ? .current : nil
    }
}
