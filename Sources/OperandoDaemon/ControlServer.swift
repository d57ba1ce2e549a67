import Logging
import OperandoControl
import OperandoIO
import Synchronization

/// The control socket: a Unix stream socket with newline-delimited JSON requests.
///
/// One accept thread and one thread per connection (a lab has a handful of clients). Every
/// request gets a reply; malformed, unknown and oversized requests get a structured error and the
/// connection stays usable; a client that disconnects or sends garbage affects nobody else.
final class ControlServer: @unchecked Sendable {
    typealias Handler = @Sendable (ControlRequest, PeerCredentials?) -> ControlReply

    static let maxConnections = 64

    let path: String
    private let handler: Handler
    private let logger: Logger
    private var listener: UnixListener?
    private var acceptThread: IOThread?
    private let stopping = Atomic<Bool>(false)
    /// Connections being served; each has a detached thread that removes itself when done.
    private let active = Mutex<Int>(0)
    private let nextID = Atomic<Int>(0)

    init(path: String, handler: @escaping Handler, logger: Logger) {
        self.path = path
        self.handler = handler
        self.logger = logger
    }

    /// Binds the socket (mode 0660) and starts accepting.
    func start() throws {
        let directory = String(path[..<(path.lastIndex(of: "/") ?? path.startIndex)])
        if !directory.isEmpty { try? FileSystem.makeDirectories(directory) }
        let listener = try UnixListener(path: path, mode: 0o660)
        self.listener = listener
        acceptThread = IOThread(name: "control-accept") { [self] in acceptLoop(listener) }
    }

    func stop() {
        stopping.store(true, ordering: .relaxed)
        acceptThread?.join()
        listener?.close()
        // Connection threads notice `stopping` within one receive timeout (200 ms).
        while active.withLock({ $0 }) > 0 { ThreadSleep.sleep(.milliseconds(10)) }
    }

    private var isStopping: Bool { stopping.load(ordering: .relaxed) }

    private func acceptLoop(_ listener: UnixListener) {
        while !isStopping {
            let connection: UnixConnection?
            do {
                connection = try listener.accept(timeout: .milliseconds(200))
            } catch {
                logger.error("control socket \(path): \(error); still listening")
                ThreadSleep.sleep(.milliseconds(100))
                continue
            }
            guard let connection else { continue }
            let peer = connection.peerCredentials()
            let id = nextID.add(1, ordering: .relaxed).newValue
            let count = active.withLock { $0 }
            guard count < Self.maxConnections else {
                logger.warning("control connection from \(peer.map { "\($0)" } ?? "unknown peer") refused: \(count) connections already open")
                try? connection.send(ControlReply.failure(id: nil, ControlError(.conflict, "too many control connections (\(count)); close some and retry")).encodedLine())
                continue
            }
            logger.info("control connection #\(id) from \(peer.map { "\($0)" } ?? "unknown peer")")
            active.withLock { $0 += 1 }
            _ = IOThread(name: "control-\(id)", detached: true) { [self] in
                serve(connection, peer: peer, id: id)
                active.withLock { $0 -= 1 }
            }
        }
    }

    private func serve(_ connection: UnixConnection, peer: PeerCredentials?, id: Int) {
        var framer = LineFramer()
        defer { logger.debug("control connection #\(id) closed") }
        while !isStopping {
            let bytes: [UInt8]?
            do {
                bytes = try connection.receive(timeout: .milliseconds(200))
            } catch {
                return
            }
            guard let bytes else { continue }
            if bytes.isEmpty { return }  // the client closed its end
            for item in framer.feed(bytes) {
                let reply: ControlReply
                switch item {
                case .line(let line):
                    switch parseRequest(line) {
                    case .success(let request):
                        reply = handler(request, peer)
                    case .failure(let rejection):
                        logger.notice("control connection #\(id): \(rejection.error)")
                        reply = rejection.reply
                    }
                case .tooLong(let n):
                    reply = .failure(id: nil, ControlError(.tooLarge, "request of \(n) bytes exceeds the \(ControlProtocol.maxRequestBytes)-byte limit; it was discarded"))
                }
                do {
                    try connection.send(reply.encodedLine())
                } catch {
                    return  // the client went away mid-reply
                }
            }
        }
    }
}
