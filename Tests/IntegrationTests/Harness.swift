import Foundation
import OperandoControl
import OperandoCore
import OperandoIO
import OperandoStore
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// Where the package's executables were built: next to this test bundle.
enum Binaries {
    static let directory: String = {
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        return URL(fileURLWithPath: exe).deletingLastPathComponent().path
    }()

    static func path(_ name: String) throws -> String {
        let p = directory + "/" + name
        guard FileManager.default.isExecutableFile(atPath: p) else {
            throw Failure("\(p) is not built; run `swift build` before `swift test` (scripts/test.sh does)")
        }
        return p
    }

    static let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
}

/// An AF_UNIX datagram socket standing in for systemd's NOTIFY_SOCKET.
final class NotifyListener {
    let path: String
    private let fd: Int32
    private(set) var messages: [String] = []

    init(path: String) throws {
        self.path = path
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in path.utf8.enumerated() { raw[i] = b }
        }
        let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        guard rc == 0 else { throw Errno.current }
    }

    deinit { close(fd); unlink(path) }

    /// Waits until a received datagram contains `text`; returns all received so far.
    @discardableResult
    func wait(for text: String, attempts: Int = 300) -> Bool {
        for _ in 0..<attempts {
            if messages.contains(where: { $0.contains(text) }) { return true }
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            if poll(&p, 1, 100) > 0 {
                var buf = [UInt8](repeating: 0, count: 4096)
                let n = recv(fd, &buf, buf.count, 0)
                if n > 0 { messages.append(String(decoding: buf[0..<n], as: UTF8.self)) }
            }
        }
        return messages.contains(where: { $0.contains(text) })
    }
}

/// operandod as a child process with its own socket, data directory and NOTIFY_SOCKET.
final class DaemonProcess {
    let directory: String
    let socket: String
    let dataDirectory: String
    let configPath: String
    let process = Process()
    let notify: NotifyListener
    let logPath: String

    init(config: String, watchdogMicroseconds: Int? = nil, file: StaticString = #filePath) throws {
        directory = NSTemporaryDirectory() + "odt-\(UUID().uuidString.prefix(8))"
        try FileSystem.makeDirectories(directory)
        socket = directory + "/control.sock"
        dataDirectory = directory + "/data"
        configPath = directory + "/operandod.toml"
        logPath = directory + "/operandod.log"
        try FileSystem.writeAtomically(configPath, bytes: Array(config.utf8))
        notify = try NotifyListener(path: directory + "/notify.sock")
        process.executableURL = URL(fileURLWithPath: try Binaries.path("operandod"))
        process.arguments = ["--config", configPath, "--socket", socket, "--data-dir", dataDirectory]
        var env = ProcessInfo.processInfo.environment
        env["NOTIFY_SOCKET"] = notify.path
        env.removeValue(forKey: "JOURNAL_STREAM")
        if let w = watchdogMicroseconds { env["WATCHDOG_USEC"] = "\(w)" }
        process.environment = env
        _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        let log = FileHandle(forWritingAtPath: logPath)!
        process.standardError = log
        process.standardOutput = log
        try process.run()
        guard notify.wait(for: "READY=1") else {
            process.terminate()
            throw Failure("operandod did not send READY=1; log:\n\(logText())")
        }
    }

    func logText() -> String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    /// Runs operandoctl against this daemon; returns (exit status, stdout, stderr).
    func ctl(_ args: [String]) throws -> (status: Int32, out: String, err: String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: try Binaries.path("operandoctl"))
        p.arguments = ["--socket", socket] + args
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        let o = out.fileHandleForReading.readDataToEndOfFile()
        let e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: o, as: UTF8.self), String(decoding: e, as: UTF8.self))
    }

    /// operandoctl … --json, decoded; fails the test on a non-zero exit.
    func json<T: Decodable>(_ type: T.Type, _ args: [String]) throws -> T {
        let r = try ctl(args + ["--json"])
        guard r.status == 0 else { throw Failure("operandoctl \(args) exited \(r.status): \(r.err)\nlog:\n\(logText())") }
        return try JSONDecoder().decode(T.self, from: Data(r.out.utf8))
    }

    /// Polls `status` until `condition` holds (fails if it never does; no timing is asserted).
    func waitForStatus(_ what: String, _ condition: (StatusResult) -> Bool) throws {
        for _ in 0..<300 {
            if condition(try json(StatusResult.self, ["status"])) { return }
            ThreadSleep.sleep(.milliseconds(50))
        }
        throw Failure("never happened: \(what)\nlog:\n\(logText())")
    }

    func terminate() -> Int32 {
        if process.isRunning {
            process.interrupt()  // SIGINT; tests that need SIGTERM send it themselves
        }
        process.waitUntilExit()
        return process.terminationStatus
    }

    deinit {
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
        try? FileManager.default.removeItem(atPath: directory)
    }
}

struct Failure: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

/// Reads a run back from disk independently of the daemon: records per stream, CRC-checked.
struct RunOnDisk {
    var manifest: RunManifest
    var records: [UInt32: [StoredRecord]] = [:]
    var damaged = 0
    var torn = 0

    init(directory: String) throws {
        manifest = try RunManifest.load(directory + "/run.json")
        for name in try FileSystem.list(directory + "/segments") {
            let scan = try SegmentReader.read(directory + "/segments/" + name) { r in
                if r.header.kind == .data || r.header.kind == .event { records[r.header.streamID, default: []].append(r) }
            }
            damaged += scan.damaged.count
            torn += scan.tornTailBytes
        }
    }

    func stream(_ name: String) -> [StoredRecord] {
        guard let d = manifest.streams.first(where: { $0.name == name }) else { return [] }
        return records[d.id] ?? []
    }

    /// Events of all event streams, decoded.
    var events: [Event] {
        manifest.streams.filter { $0.kind == .events }.flatMap { stream($0.name) }.compactMap { try? JSONDecoder().decode(Event.self, from: Data($0.payload)) }
    }

    func assertContiguous(_ name: String, file: StaticString = #filePath, line: UInt = #line) {
        let seqs = stream(name).map(\.header.sequence)
        guard let first = seqs.first else { return }
        XCTAssertEqual(seqs, Array(first..<(first + UInt64(seqs.count))), "\(name): sequence numbers on disk have gaps", file: file, line: line)
    }
}
