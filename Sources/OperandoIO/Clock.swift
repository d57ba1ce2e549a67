#if canImport(Glibc)
import Glibc
#endif
import OperandoCore
import Synchronization

/// The host clock of record: CLOCK_MONOTONIC_RAW, unaffected by NTP slewing or wall-clock steps.
public struct MonotonicRawClock: HostClock {
    public init() {}

    @inline(__always)
    public func now() -> HostInstant {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC_RAW, &ts)
        return HostInstant(nanoseconds: Int64(ts.tv_sec) &* 1_000_000_000 &+ Int64(ts.tv_nsec))
    }

    /// Reads CLOCK_REALTIME between two CLOCK_MONOTONIC_RAW reads, keeping the tightest of a few
    /// tries, and CLOCK_TAI for the TAI−UTC offset the kernel knows (0 when unset).
    public func realtimeAnchor() -> RealtimeAnchor {
        var best: RealtimeAnchor?
        for _ in 0..<5 {
            let before = now()
            var rt = timespec()
            clock_gettime(CLOCK_REALTIME, &rt)
            let after = now()
            var tai = timespec()
            clock_gettime(CLOCK_TAI, &tai)
            let anchor = RealtimeAnchor(
                before: before, after: after,
                utcNanoseconds: Int64(rt.tv_sec) * 1_000_000_000 + Int64(rt.tv_nsec),
                taiOffsetSeconds: Int64(tai.tv_sec - rt.tv_sec))
            if best == nil || anchor.uncertaintyNanoseconds < best!.uncertaintyNanoseconds { best = anchor }
        }
        return best!
    }
}

/// Sleeping helpers for threads that own their loop (never for the cooperative pool).
public enum ThreadSleep {
    public static func sleep(_ duration: Duration) {
        let (s, attos) = duration.components
        var ts = timespec(tv_sec: Int(s), tv_nsec: Int(attos / 1_000_000_000))
        var remaining = timespec()
        while nanosleep(&ts, &remaining) == -1 && errno == EINTR { ts = remaining }
    }

    /// The `block` overflow policy's wait: a few microseconds, so a producer notices room quickly
    /// without spinning a core.
    @Sendable public static func ringBackoff() { sleep(.microseconds(20)) }
}

extension Duration {
    /// Whole milliseconds, rounded up, clamped to Int32 for poll(2).
    public var pollMilliseconds: Int32 {
        let (s, attos) = components
        let ms = s * 1000 + (attos + 999_999_999_999_999) / 1_000_000_000_000_000
        return Int32(clamping: max(0, ms))
    }

    public var nanoseconds: Int64 {
        let (s, attos) = components
        return s * 1_000_000_000 + attos / 1_000_000_000
    }
}

extension ThreadSleep {
    /// Gives up the CPU once (sched_yield), for spin-waits in benchmarks and tests.
    @Sendable public static func yield() { sched_yield() }
}

/// SIGTERM/SIGINT as a flag that a thread's loop polls (for tools that are not ServiceGroups).
public enum TerminationSignal {
    private static let flag = Atomic<Bool>(false)

    /// Installs handlers for SIGTERM and SIGINT that only set the flag; ignores SIGPIPE.
    public static func install() {
        signal(SIGTERM) { _ in TerminationSignal.flag.store(true, ordering: .relaxed) }
        signal(SIGINT) { _ in TerminationSignal.flag.store(true, ordering: .relaxed) }
        signal(SIGPIPE, SIG_IGN)
    }

    public static var received: Bool { flag.load(ordering: .relaxed) }
}
