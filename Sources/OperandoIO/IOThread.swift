#if canImport(Glibc)
import Glibc
#endif

/// A dedicated OS thread (not the cooperative pool) for blocking device I/O and the writer.
public final class IOThread: @unchecked Sendable {
    private var thread: pthread_t = 0
    private let name: String
    private var joined = false

    private final class Box {
        let body: () -> Void
        let name: String
        init(_ body: @escaping () -> Void, name: String) {
            self.body = body
            self.name = name
        }
    }

    /// Starts `body` on a new thread named `name` (the first 15 bytes show in `top -H` and `ps`).
    /// A `detached` thread releases its resources when it ends and cannot be joined.
    public init(name: String, detached: Bool = false, _ body: @escaping @Sendable () -> Void) {
        self.name = name
        let box = Unmanaged.passRetained(Box(body, name: name)).toOpaque()
        let rc = pthread_create(&thread, nil, { raw in
            let box = Unmanaged<Box>.fromOpaque(raw!).takeRetainedValue()
            IOThread.setCurrentName(box.name)
            box.body()
            return nil
        }, box)
        precondition(rc == 0, "pthread_create failed for \(name): \(Errno(rawValue: rc))")
        if detached {
            pthread_detach(thread)
            joined = true
        }
    }

    /// Names the calling thread (Linux keeps 15 bytes) through /proc, so `top -H` shows it.
    static func setCurrentName(_ name: String) {
        let fd = Glibc.open("/proc/thread-self/comm", O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { return }
        let bytes = Array(name.utf8.prefix(15))
        _ = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        Glibc.close(fd)
    }

    /// Waits for the thread to finish. Call once.
    public func join() {
        guard !joined else { return }
        joined = true
        pthread_join(thread, nil)
    }
}

/// A mutex and condition variable for threads that must wait (in-memory links, run-state changes).
public final class ConditionLock: @unchecked Sendable {
    private var mutex = pthread_mutex_t()
    private var cond = pthread_cond_t()

    public init() {
        pthread_mutex_init(&mutex, nil)
        var attr = pthread_condattr_t()
        pthread_condattr_init(&attr)
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC)
        pthread_cond_init(&cond, &attr)
        pthread_condattr_destroy(&attr)
    }

    deinit {
        pthread_cond_destroy(&cond)
        pthread_mutex_destroy(&mutex)
    }

    public func withLock<T>(_ body: () throws -> T) rethrows -> T {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        return try body()
    }

    /// Waits (lock held) until `predicate` is true or `timeout` passes. Returns the predicate.
    public func wait(until predicate: () -> Bool, timeout: Duration) -> Bool {
        var deadline = timespec()
        clock_gettime(CLOCK_MONOTONIC, &deadline)
        let ns = Int64(deadline.tv_nsec) + timeout.nanoseconds
        deadline.tv_sec += Int(ns / 1_000_000_000)
        deadline.tv_nsec = Int(ns % 1_000_000_000)
        while !predicate() {
            if pthread_cond_timedwait(&cond, &mutex, &deadline) == ETIMEDOUT { return predicate() }
        }
        return true
    }

    /// Wakes all waiters (call with the lock held or not).
    public func broadcast() { pthread_cond_broadcast(&cond) }
}

/// A one-shot value handed from one thread to another that waits for it.
public final class Completion<T: Sendable>: @unchecked Sendable {
    private let lock = ConditionLock()
    private var value: T?

    public init() {}

    public func fulfil(_ v: T) {
        lock.withLock { value = v }
        lock.broadcast()
    }

    /// Waits until fulfilled (call from a dedicated thread, never the cooperative pool).
    public func wait() -> T {
        lock.withLock {
            while value == nil { _ = lock.wait(until: { value != nil }, timeout: .seconds(1)) }
            return value!
        }
    }
}
