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

    deinit {
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
        try? FileManager.default.removeItem(atPath: directory)
    }
}

