import Foundation
import OperandoControl
import OperandoCore
import OperandoIO
import OperandoStore
import XCTest

#if canImport(Glibc)
import Glibc
#endif

// Shared by the test targets that run the real executables (IntegrationTests, HardwareTests).

/// Where the package's executables were built: next to this test bundle.
public enum Binaries {
    public static let directory: String = {
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        return URL(fileURLWithPath: exe).deletingLastPathComponent().path
    }()

    public static func path(_ name: String) throws -> String {
        let p = directory + "/" + name
        guard FileManager.default.isExecutableFile(atPath: p) else {
            throw Failure("\(p) is not built; run `swift build` before `swift test` (scripts/test.sh does)")
        }
        return p
    }

    public static let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
}

/// An AF_UNIX datagram socket standing in for systemd's NOTIFY_SOCKET.
public final class NotifyListener {
    public let path: String
    private let fd: Int32
    public private(set) var messages: [String] = []

    public init(path: String) throws {
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
    public func wait(for text: String, attempts: Int = 300) -> Bool {
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

/// operandoctl against a daemon's socket.
public struct ControlClient: Sendable {
    public let socket: String
    /// Extra text for failure messages (e.g. the daemon's log).
    public let context: @Sendable () -> String

    public init(socket: String, context: @escaping @Sendable () -> String = { "" }) {
        self.socket = socket
        self.context = context
    }

    /// Runs operandoctl; returns (exit status, stdout, stderr).
    public func ctl(_ args: [String]) throws -> (status: Int32, out: String, err: String) {
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

    /// operandoctl … --json, decoded; throws on a non-zero exit.
    public func json<T: Decodable>(_ type: T.Type, _ args: [String]) throws -> T {
        let r = try ctl(args + ["--json"])
        guard r.status == 0 else { throw Failure("operandoctl \(args) exited \(r.status): \(r.err)\n\(context())") }
        return try JSONDecoder().decode(T.self, from: Data(r.out.utf8))
    }

    /// Polls `status` until `condition` holds (throws if it never does; no timing is asserted).
    public func waitForStatus(_ what: String, attempts: Int = 300, _ condition: (StatusResult) -> Bool) throws {
        for _ in 0..<attempts {
            if let s = try? json(StatusResult.self, ["status"]), condition(s) { return }
            ThreadSleep.sleep(.milliseconds(50))
        }
        throw Failure("never happened: \(what)\n\(context())")
    }

    /// Polls `devices` until `condition` holds for the named device.
    public func waitForDevice(_ name: String, _ what: String, attempts: Int = 300, _ condition: (DeviceInfo) -> Bool) throws {
        for _ in 0..<attempts {
            if let d = try? json([DeviceInfo].self, ["devices"]).first(where: { $0.name == name }), condition(d) { return }
            ThreadSleep.sleep(.milliseconds(50))
        }
        throw Failure("never happened: \(name) \(what)\n\(context())")
    }
}

public struct Failure: Error, CustomStringConvertible {
    public var description: String
    public init(_ d: String) { description = d }
}

/// Reads a run back from disk independently of the daemon: records per stream, CRC-checked.
public struct RunOnDisk {
    public var manifest: RunManifest
    public var records: [UInt32: [StoredRecord]] = [:]
    public var damaged = 0
    public var torn = 0

    public init(directory: String) throws {
        let reader = try RunReader(directory: directory)
        manifest = reader.manifest
        var records: [UInt32: [StoredRecord]] = [:]
        let scan = try reader.records { records[$0.header.streamID, default: []].append($0) }
        self.records = records
        damaged = scan.damagedRegions
        torn = scan.tornTailBytes
    }

    public func stream(_ name: String) -> [StoredRecord] {
        guard let d = manifest.streams.first(where: { $0.name == name }) else { return [] }
        return records[d.id] ?? []
    }

    /// Events of all event streams, decoded.
    public var events: [Event] {
        manifest.streams.filter { $0.kind == .events }.flatMap { stream($0.name) }.compactMap { try? JSONDecoder().decode(Event.self, from: Data($0.payload)) }
    }

    public func assertContiguous(_ name: String, file: StaticString = #filePath, line: UInt = #line) {
        let seqs = stream(name).map(\.header.sequence)
        guard let first = seqs.first else { return }
        XCTAssertEqual(seqs, Array(first..<(first + UInt64(seqs.count))), "\(name): sequence numbers on disk have gaps", file: file, line: line)
    }
}

/// Every stream of a stopped run: nothing dropped, everything produced was written.
public func assertNothingLost(_ stop: RunStopResult, file: StaticString = #filePath, line: UInt = #line) {
    for st in stop.streams {
        XCTAssertEqual(st.dropped, 0, st.name, file: file, line: line)
        XCTAssertEqual(st.written, st.produced, st.name, file: file, line: line)
    }
}
