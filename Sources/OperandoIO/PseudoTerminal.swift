#if canImport(Glibc)
import Glibc
#endif
import COperandoShim
import OperandoCore
import Synchronization

/// A pseudo-terminal pair whose master side serves a simulator as a `ByteStreamTransport`,
/// while a client (operandod, a vendor's library, a terminal program) opens the slave side as if
/// it were a serial port: `/dev/pts/N`, or the stable symlink `linkPath` pointing at it.
///
/// The slave is put in raw mode (cfmakeraw) once at creation. Clients may come and go, and each
/// sees the line as a serial port's user would:
///
/// - The terminal keeps one slave descriptor of its own open, so the master never reads EIO
///   between clients ("no client yet" is simply silence: `read` returns 0 bytes at its timeout).
/// - It watches the slave's opens and closes (inotify). Bytes written while no client has the
///   slave open are discarded, as on a serial line with nothing attached; and when a client opens
///   or closes the slave, whatever an earlier client left unread is flushed (TCIFLUSH), as
///   closing a serial port flushes its input. Without this the kernel would hand the next client
///   replies to commands it never sent. The flush happens when the terminal sees the open or
///   close (at once while its thread waits in `read`, else at its next `read` or `write`), so a
///   client that opens within that instant of another's close, or a reply to a command sent just
///   before a close and read after the next open, can still slip through; `clientCount` tells
///   when the terminal has caught up.
/// - A client that has the slave open but stops reading makes `write` throw `replyTimedOut` once
///   the terminal's buffer has stayed full for the write's timeout.
///
/// Used by one thread at a time (the simulator's), like every transport.
public final class PseudoTerminal: ByteStreamTransport, @unchecked Sendable {
    /// The slave's device path, e.g. `/dev/pts/3`.
    public private(set) var slavePath: String
    /// The symlink created to `slavePath` (removed by `close`), if one was asked for.
    public let linkPath: String?
    private let clock: any HostClock
    private var master: FileDescriptor?
    /// The terminal's own slave descriptor: keeps the pair up between clients, and is what
    /// flushes the slave's input queue.
    private var keeper: FileDescriptor?
    /// inotify descriptor watching the slave for opens and closes.
    private var watcher: FileDescriptor?
    /// Clients that have the slave open, counted from the watcher's events.
    private var clients = 0 {
        didSet { publishedClients.store(clients, ordering: .relaxed) }
    }
    /// `clients` for other threads; relaxed: a progress indicator, it orders nothing else.
    private let publishedClients = Atomic<Int>(0)

    /// How many clients had the slave open when the serving thread last looked (it looks at every
    /// read and write). For tests and status lines.
    public var clientCount: Int { publishedClients.load(ordering: .relaxed) }

    /// Opens a new pseudo-terminal pair and, when `linkPath` is given, points a symlink there at its
    /// slave (replacing an existing symlink, refusing to replace anything else).
    public init(linkPath: String? = nil, clock: any HostClock) throws {
        self.linkPath = linkPath
        self.clock = clock
        slavePath = ""
        try open()
    }

    deinit { close() }

    public var endpoint: String { linkPath ?? slavePath }

    /// Creates the pair (and the link) if it is not open; a no-op while it is.
    public func open() throws {
        guard master == nil else { return }
        let fd = coperando_posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC)
        guard fd >= 0 else {
            throw InstrumentError(
                .transportFailed, device: "pseudo-terminal",
                "posix_openpt failed; is /dev/ptmx there and devpts mounted (mount -t devpts devpts /dev/pts)?", underlying: Errno.current)
        }
        let candidate = FileDescriptor(rawValue: fd)
        var keeper: FileDescriptor?
        var watcher: FileDescriptor?
        do {
            guard coperando_grantpt(fd) == 0 else { throw failure("grantpt", Errno.current) }
            guard coperando_unlockpt(fd) == 0 else { throw failure("unlockpt", Errno.current) }
            var name = [CChar](repeating: 0, count: 128)
            let rc = coperando_ptsname_r(fd, &name, name.count)
            guard rc == 0 else { throw failure("ptsname_r", Errno(rawValue: rc)) }
            let path = String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            try candidate.setNonBlocking(true)
            keeper = try Self.openRaw(path)
            watcher = try Self.watch(path)
            if let linkPath { try Self.link(linkPath, to: path) }
            slavePath = path
            master = candidate
            self.keeper = keeper
            self.watcher = watcher
            clients = 0
        } catch {
            watcher?.close()
            keeper?.close()
            candidate.close()
            throw error
        }
    }

    /// Closes the pair (a client then reads EOF or EIO) and removes the link if it still points at
    /// this terminal.
    public func close() {
        guard let master else { return }
        watcher?.close()
        keeper?.close()
        master.close()
        watcher = nil
        keeper = nil
        self.master = nil
        if let linkPath, Self.readLink(linkPath) == slavePath { unlink(linkPath) }
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer, timeout: Duration) throws -> TransportRead {
        guard let master, let watcher else { throw InstrumentError(.disconnected, device: endpoint, "the pseudo-terminal is closed") }
        // The timeout is real time (an injected test clock may stand still); `clock` stamps reads.
        let monotonic = MonotonicRawClock()
        let deadline = monotonic.now().advanced(byNanoseconds: timeout.nanoseconds)
        while true {
            // Opens and closes first: they happened before any command a new client sends.
            processClientEvents()
            let n = Glibc.read(master.rawValue, buffer.baseAddress, buffer.count)
            if n > 0 { return TransportRead(count: n, hostTime: clock.now()) }
            let e = Errno.current
            if n < 0 && e != .wouldBlock && e != .interrupted && e != Errno(rawValue: EIO) {
                throw InstrumentError(.transportFailed, device: endpoint, "read from the pseudo-terminal master failed", underlying: e)
            }
            let remaining = deadline.nanoseconds - monotonic.now().nanoseconds
            if remaining <= 0 { return TransportRead(count: 0, hostTime: clock.now()) }
            var fds = [
                pollfd(fd: master.rawValue, events: Int16(POLLIN), revents: 0),
                pollfd(fd: watcher.rawValue, events: Int16(POLLIN), revents: 0),
            ]
            if Glibc.poll(&fds, 2, Duration.nanoseconds(remaining).pollMilliseconds) < 0 && errno != EINTR {
                throw InstrumentError(.transportFailed, device: endpoint, "poll on the pseudo-terminal master failed", underlying: Errno.current)
            }
        }
    }

    public func write(_ bytes: UnsafeRawBufferPointer, timeout: Duration) throws {
        guard let master else { throw InstrumentError(.disconnected, device: endpoint, "the pseudo-terminal is closed") }
        processClientEvents()
        guard clients > 0 else { return }  // nobody listening: the bytes go nowhere
        var offset = 0
        while offset < bytes.count {
            let n = Glibc.write(master.rawValue, bytes.baseAddress! + offset, bytes.count - offset)
            if n >= 0 {
                offset += n
                continue
            }
            let e = Errno.current
            if e == .interrupted { continue }
            guard e == .wouldBlock else {
                throw InstrumentError(.transportFailed, device: endpoint, "write to the pseudo-terminal master failed", underlying: e)
            }
            var p = pollfd(fd: master.rawValue, events: Int16(POLLOUT), revents: 0)
            if Glibc.poll(&p, 1, timeout.pollMilliseconds) == 0 {
                throw InstrumentError(
                    .replyTimedOut, device: endpoint,
                    "the client of \(endpoint) has not read for \(timeout) and the terminal buffer is full; is it hung?")
            }
        }
    }

    /// Reads the watcher's pending events: counts clients, and flushes the slave's input queue
    /// whenever one opens or closes it.
    private func processClientEvents() {
        guard let watcher, let keeper else { return }
        var events = [UInt8](repeating: 0, count: 1024)
        var changed = false
        while true {
            let n = events.withUnsafeMutableBytes { Glibc.read(watcher.rawValue, $0.baseAddress, $0.count) }
            guard n > 0 else { break }
            var offset = 0
            // struct inotify_event: int wd; uint32_t mask, cookie, len; char name[len].
            while offset + 16 <= n {
                let (mask, length) = events.withUnsafeBytes {
                    ($0.loadUnaligned(fromByteOffset: offset + 4, as: UInt32.self), $0.loadUnaligned(fromByteOffset: offset + 12, as: UInt32.self))
                }
                if mask & UInt32(IN_OPEN) != 0 { clients += 1 }
                if mask & UInt32(IN_CLOSE_WRITE | IN_CLOSE_NOWRITE) != 0 { clients = max(0, clients - 1) }
                changed = true
                offset += 16 + Int(length)
            }
        }
        if changed { tcflush(keeper.rawValue, TCIFLUSH) }
    }

    private func failure(_ call: String, _ errno: Errno) -> InstrumentError {
        InstrumentError(.transportFailed, device: "pseudo-terminal", "\(call) on a new pseudo-terminal failed", underlying: errno)
    }

    /// Opens the slave (the terminal's own descriptor) and puts it in raw mode: 8 data bits, no
    /// echo, no line editing, no CR/LF translation, at 115200 baud for clients that read it back.
    private static func openRaw(_ path: String) throws -> FileDescriptor {
        let fd = Glibc.open(path, O_RDWR | O_NOCTTY | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else {
            throw InstrumentError(.transportFailed, device: path, "cannot open the new pseudo-terminal's slave", underlying: Errno.current)
        }
        var t = termios()
        guard tcgetattr(fd, &t) == 0 else {
            let e = Errno.current
            Glibc.close(fd)
            throw InstrumentError(.transportFailed, device: path, "tcgetattr on the pseudo-terminal slave failed", underlying: e)
        }
        cfmakeraw(&t)
        cfsetispeed(&t, speed_t(B115200))
        cfsetospeed(&t, speed_t(B115200))
        guard tcsetattr(fd, TCSANOW, &t) == 0 else {
            let e = Errno.current
            Glibc.close(fd)
            throw InstrumentError(.transportFailed, device: path, "tcsetattr (raw mode) on the pseudo-terminal slave failed", underlying: e)
        }
        return FileDescriptor(rawValue: fd)
    }

    /// An inotify descriptor reporting opens and closes of `path`.
    private static func watch(_ path: String) throws -> FileDescriptor {
        let fd = inotify_init1(Int32(IN_NONBLOCK | IN_CLOEXEC))
        guard fd >= 0 else {
            throw InstrumentError(
                .transportFailed, device: path, "inotify_init1 failed; raise fs.inotify.max_user_instances if it is exhausted", underlying: Errno.current)
        }
        guard inotify_add_watch(fd, path, UInt32(IN_OPEN | IN_CLOSE_WRITE | IN_CLOSE_NOWRITE)) >= 0 else {
            let e = Errno.current
            Glibc.close(fd)
            throw InstrumentError(
                .transportFailed, device: path, "cannot watch the pseudo-terminal slave for opens and closes (inotify_add_watch)", underlying: e)
        }
        return FileDescriptor(rawValue: fd)
    }

    private static func link(_ linkPath: String, to target: String) throws {
        var st = stat()
        if lstat(linkPath, &st) == 0 {
            guard st.st_mode & S_IFMT == S_IFLNK else {
                throw InstrumentError(
                    .transportFailed, device: linkPath,
                    "\(linkPath) exists and is not a symlink; refusing to replace it with a link to \(target); choose another path")
            }
            unlink(linkPath)
        }
        guard symlink(target, linkPath) == 0 else {
            throw InstrumentError(
                .transportFailed, device: linkPath, "cannot create the symlink to \(target); does its directory exist and is it writable?",
                underlying: Errno.current)
        }
    }

    private static func readLink(_ path: String) -> String? {
        var buffer = [CChar](repeating: 0, count: 4096)
        let n = readlink(path, &buffer, buffer.count - 1)
        guard n >= 0 else { return nil }
        return String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
