import Foundation
import OperandoControl
import OperandoCore
import OperandoIO
import OperandoStore
import OperandoTestSupport
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// operandod as a child process with its own socket, data directory and NOTIFY_SOCKET.
final class DaemonProcess {
    let directory: String
    let socket: String
    let dataDirectory: String
    let configPath: String
    let process = Process()
    let notify: NotifyListener
    let logPath: String

    /// - Parameters:
    ///   - directory: reuse this directory (its data directory too), e.g. to restart after a kill.
    ///   - environment: extra environment variables (e.g. LD_PRELOAD of a fault shim).
    init(config: String, directory: String? = nil, environment: [String: String] = [:], watchdogMicroseconds: Int? = nil, file: StaticString = #filePath) throws {
        let directory = directory ?? NSTemporaryDirectory() + "odt-\(UUID().uuidString.prefix(8))"
        self.directory = directory
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
        env.merge(environment) { $1 }
        process.environment = env
        if !FileManager.default.fileExists(atPath: logPath) { _ = FileManager.default.createFile(atPath: logPath, contents: nil) }
        let log = FileHandle(forWritingAtPath: logPath)!
        log.seekToEndOfFile()
        process.standardError = log
        process.standardOutput = log
        try process.run()
        guard notify.wait(for: "READY=1") else {
            process.terminate()
            throw Failure("operandod did not send READY=1; log:\n\(logText())")
        }
    }

    func logText() -> String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    var client: ControlClient {
        let path = logPath
        return ControlClient(socket: socket, context: { "log:\n" + ((try? String(contentsOfFile: path, encoding: .utf8)) ?? "") })
    }

    func ctl(_ args: [String]) throws -> (status: Int32, out: String, err: String) { try client.ctl(args) }
    func json<T: Decodable>(_ type: T.Type, _ args: [String]) throws -> T { try client.json(type, args) }
    func waitForStatus(_ what: String, _ condition: (StatusResult) -> Bool) throws { try client.waitForStatus(what, condition) }

    func terminate() -> Int32 {
        if process.isRunning {
            process.interrupt()  // SIGINT; tests that need SIGTERM send it themselves
        }
        process.waitUntilExit()
        return process.terminationStatus
    }

    /// SIGKILL: the daemon gets no chance to close anything (a crash, as far as the disk can tell).
    func kill9() {
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    /// False for a daemon whose directory a later daemon takes over.
    var removesDirectory = true

    deinit {
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
        if removesDirectory { try? FileManager.default.removeItem(atPath: directory) }
    }
}


/// `operando-sim SIMULATOR --listen 127.0.0.1:PORT` (port 0: any); returns it and its port.
func startSimulator(_ simulator: String, port: UInt16) throws -> (Process, UInt16) {
    let sim = Process()
    sim.executableURL = URL(fileURLWithPath: try Binaries.path("operando-sim"))
    sim.arguments = [simulator, "--listen", "127.0.0.1:\(port)"]
    let out = Pipe()
    sim.standardOutput = out
    sim.standardError = FileHandle.nullDevice
    try sim.run()
    // First line: "operando-sim: SIMULATOR listening on 127.0.0.1:PORT"
    var line = Data()
    while !line.contains(0x0A) {
        let chunk = out.fileHandleForReading.availableData
        if chunk.isEmpty { break }
        line += chunk
    }
    let text = String(decoding: line, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    guard let p = text.split(separator: ":").last.flatMap({ UInt16($0) }) else { throw Failure("operando-sim said: \(text)") }
    return (sim, p)
}
