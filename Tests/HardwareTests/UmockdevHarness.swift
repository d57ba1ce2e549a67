import Foundation
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// Drives Tests/Support/umockdev-harness.py from XCTest: emulated /dev/ttyUSBn devices with USB
/// parents (umockdev), simulators behind them, and a program under test that sees them through
/// the real libserialport; and emulated libusb devices (`EmulatedUSBDevice`, /dev/bus/usb/BBB/DDD
/// served by an interactive usbfs ioctl handler) that it sees through the real libusb-1.0. See the
/// header of umockdev-harness.py for the CLI and protocol.
///
/// Typical use:
///
///     try UmockdevHarness.requireEnvironment()
///     let harness = try UmockdevHarness(
///         devices: [EmulatedSerialDevice(name: "ttyUSB0", serial: "A10K1ABC",
///                                        simulator: .exec(["operando-sim", "zaber", "--stdio"]))],
///         program: [operandodPath, "--config", configPath])
///     defer { harness.stop() }
///     try harness.waitUntilReady()
///     try harness.control("unplug ttyUSB0")
struct HarnessError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// One emulated device: a `--device` (and `--sim`) of the harness.
struct EmulatedSerialDevice {
    /// How the device side is served; `sim=` in the harness.
    enum Simulator {
        /// The harness echoes every byte back.
        case echo
        /// The harness reads and discards; nothing answers.
        case silent
        /// A command started per plug. Placeholders: {fd}, {link}, {name}, {dev}, {serial}.
        /// Without {fd} or {link} the command speaks the device protocol on stdin/stdout.
        case exec([String])
        /// A Unix stream server the harness connects to at every plug.
        case unix(String)
        /// A TCP server the harness connects to at every plug.
        case tcp(host: String, port: Int)

        var spec: String {
            switch self {
            case .echo: return "echo"
            case .silent: return "silent"
            case .exec(let argv): return "exec:" + argv.map(UmockdevHarness.shellQuoted).joined(separator: " ")
            case .unix(let path): return "unix:" + path
            case .tcp(let host, let port): return "tcp:\(host):\(port)"
            }
        }
    }

    var name = "ttyUSB0"
    var vid = "0403"
    var pid = "6001"
    var manufacturer = "FTDI"
    var product = "FT232R USB UART"
    var serial = "OPSIM000"
    var simulator: Simulator = .echo

    var harnessArguments: [String] {
        let words = [
            "name=\(name)", "vid=\(vid)", "pid=\(pid)", "manufacturer=\(manufacturer)", "product=\(product)",
            "serial=\(serial)",
        ]
        return ["--device", words.map(UmockdevHarness.shellQuoted).joined(separator: " "), "--sim", "\(name)=\(simulator.spec)"]
    }
}

/// One emulated libusb device: a `--usb-device` (and `--usb-sim`) of the harness. The program under
/// test sees it through the real libusb-1.0 (enumeration, open, claim, control and bulk transfers);
/// see "USB DEVICES" in the header of umockdev-harness.py.
struct EmulatedUSBDevice {
    /// How the device side is served; `sim=` in the harness.
    enum Simulator {
        /// Each bulk OUT transfer comes back as one bulk IN transfer.
        case echo
        /// OUT transfers are accepted and dropped; IN transfers never complete.
        case silent
        /// A command started per plug, given one end of an AF_UNIX SOCK_SEQPACKET socketpair as
        /// `{fd}` (or as stdin/stdout without `{fd}`): each bulk OUT transfer is one message to it,
        /// each message it sends is one bulk IN transfer. Also replaced: {name}, {dev}, {serial}.
        case exec([String])
        /// A SOCK_SEQPACKET server the harness connects to at every plug (same contract).
        case unix(String)

        var spec: String {
            switch self {
            case .echo: return "echo"
            case .silent: return "silent"
            case .exec(let argv): return "exec:" + argv.map(UmockdevHarness.shellQuoted).joined(separator: " ")
            case .unix(let path): return "unix:" + path
            }
        }
    }

    /// The label used in control commands ("unplug amptek0") and in the ready file.
    var name = "usb0"
    var vid = "1209"
    var pid = "0001"
    var manufacturer = "Operando"
    var product = "Emulated USB device"
    var serial = "OPUSB000"
    /// Interface 0's endpoints, e.g. "02,81" (the default) or "01,82,83:int".
    var endpoints: String? = nil
    /// "1.5", "12" or "480" (the default).
    var speed: String? = nil
    var simulator: Simulator = .echo

    /// "10c4:842a:DPP00001", as usbprobe takes it.
    var selector: String { "\(vid):\(pid):\(serial)" }

    var harnessArguments: [String] {
        var words = [
            "name=\(name)", "vid=\(vid)", "pid=\(pid)", "manufacturer=\(manufacturer)", "product=\(product)",
            "serial=\(serial)",
        ]
        if let endpoints { words.append("endpoints=\(endpoints)") }
        if let speed { words.append("speed=\(speed)") }
        return ["--usb-device", words.map(UmockdevHarness.shellQuoted).joined(separator: " "),
                "--usb-sim", "\(name)=\(simulator.spec)"]
    }
}

/// A running umockdev-harness.py with its program under test.
final class UmockdevHarness: @unchecked Sendable {
    static let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent().path
    static let script = packageRoot + "/Tests/Support/umockdev-harness.py"
    static let python = "/usr/bin/python3"  // Debian's python: apt's python3-gi is installed for it

    /// Where the package's products were built: next to this test bundle.
    static let buildDirectory: String = {
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        return URL(fileURLWithPath: exe).deletingLastPathComponent().path
    }()

    /// The modem-line shim (product `operando-modem-shim`), or $OPERANDO_MODEM_SHIM.
    static var shimPath: String {
        ProcessInfo.processInfo.environment["OPERANDO_MODEM_SHIM"] ?? buildDirectory + "/liboperando-modem-shim.so"
    }

    let directory: String
    let controlPath: String
    let readyPath: String
    private let process = Process()
    private let input = Pipe()
    private let output: LineReader

    /// Starts the harness. `program` is the program under test; its stdin and stdout are
    /// connected to `send(_:)` and `nextLine(timeout:)`, its stderr (and the harness's log) go to
    /// this process's stderr. `devices` are emulated ttys, `usbDevices` emulated libusb devices;
    /// `extraArguments` go to the harness before the program (e.g. ["--usb-memory", "ioctl"]).
    init(devices: [EmulatedSerialDevice] = [], usbDevices: [EmulatedUSBDevice] = [], program: [String],
         shim: Bool = true, timeout: TimeInterval = 120, verbose: Bool = false, extraArguments: [String] = []) throws {
        directory = try Self.makeTemporaryDirectory(prefix: "umh")
        controlPath = directory + "/control.sock"
        readyPath = directory + "/ready.json"
        var arguments = [Self.script, "--control", controlPath, "--ready-file", readyPath, "--timeout", String(Int(timeout))]
        arguments += shim ? ["--shim", Self.shimPath] : ["--no-shim"]
        if verbose { arguments.append("--verbose") }
        for device in devices { arguments += device.harnessArguments }
        for device in usbDevices { arguments += device.harnessArguments }
        arguments += extraArguments
        arguments += ["--"] + program
        process.executableURL = URL(fileURLWithPath: Self.python)
        process.arguments = arguments
        process.standardInput = input
        let stdout = Pipe()
        process.standardOutput = stdout
        output = LineReader(stdout.fileHandleForReading)
        try process.run()
        output.start()
    }

    deinit { stop() }

    /// Waits until the harness has plugged every device and started the program under test.
    @discardableResult
    func waitUntilReady(timeout: TimeInterval = 20) throws -> [String: Any] {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if let data = FileManager.default.contents(atPath: readyPath),
               let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any] {
                return object
            }
            if !process.isRunning {
                throw HarnessError("umockdev-harness exited with status \(process.terminationStatus) before it was ready (its log is on stderr)")
            }
            usleep(20_000)
        }
        throw HarnessError("umockdev-harness was not ready after \(timeout) s")
    }

    /// Sends one control command ("unplug ttyUSB0", ...); returns the answer after "ok".
    @discardableResult
    func control(_ command: String, timeout: TimeInterval = 10) throws -> String {
        let answer = try Self.request(socketPath: controlPath, line: command, timeout: timeout)
        guard answer == "ok" || answer.hasPrefix("ok ") else {
            throw HarnessError("harness command \"\(command)\" failed: \(answer)")
        }
        return String(answer.dropFirst(2)).trimmingCharacters(in: .whitespaces)
    }

    /// Writes one line to the program under test's stdin.
    func send(_ line: String) {
        input.fileHandleForWriting.write(Data((line + "\n").utf8))
    }

    /// The next line the program under test printed, or nil after `timeout` or at its end.
    func nextLine(timeout: TimeInterval = 10) -> String? { output.nextLine(timeout: timeout) }

    /// Waits for the harness (and so the program under test) to exit; returns its status.
    func waitForExit(timeout: TimeInterval = 20) throws -> Int32 {
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning {
            if Date() > deadline { throw HarnessError("umockdev-harness still running after \(timeout) s") }
            usleep(10_000)
        }
        return process.terminationStatus
    }

    /// Ends the program under test and the harness (SIGTERM, then SIGKILL), removes the files.
    func stop() {
        try? input.fileHandleForWriting.close()
        if process.isRunning {
            process.terminate()  // the harness passes SIGTERM on to the program under test
            let deadline = Date().addingTimeInterval(10)
            while process.isRunning && Date() < deadline { usleep(10_000) }
            if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        }
        try? FileManager.default.removeItem(atPath: directory)
    }

    // MARK: - Environment

    /// Fails (throws) with what to install when the machine cannot run emulated-hardware tests.
    /// These tests must not be skipped: a missing package is a broken test machine.
    static func requireEnvironment() throws {
        var missing: [String] = []
        if !FileManager.default.isExecutableFile(atPath: python) {
            missing.append("\(python) (python3)")
        } else {
            let check = "import gi; gi.require_version('UMockdev', '1.0'); from gi.repository import UMockdev"
            if (try? run(python, ["-c", check]).status) != 0 {
                missing.append("umockdev's Python bindings for \(python) (gir1.2-umockdev-1.0, python3-gi)")
            }
        }
        let libraryDirectories = ["/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/lib/x86_64-linux-gnu"]
        if !libraryDirectories.contains(where: { FileManager.default.fileExists(atPath: $0 + "/libumockdev-preload.so.0") }) {
            missing.append("libumockdev-preload.so.0 (umockdev)")
        }
        if (try? run("/usr/bin/env", ["pkg-config", "--exists", "libserialport"]).status) != 0 {
            missing.append("libserialport's development files (libserialport-dev, pkg-config)")
        }
        if (try? run("/usr/bin/env", ["pkg-config", "--exists", "libusb-1.0"]).status) != 0 {
            missing.append("libusb-1.0's development files (libusb-1.0-0-dev, pkg-config)")
        }
        if (try? run("/usr/bin/env", ["cc", "--version"]).status) != 0 {
            missing.append("a C compiler (cc)")
        }
        if !missing.isEmpty {
            throw HarnessError("emulated-hardware tests cannot run: missing \(missing.joined(separator: "; ")). Run scripts/install-deps.sh")
        }
        if !FileManager.default.fileExists(atPath: shimPath) {
            throw HarnessError("\(shimPath) is not built; run `swift build --build-tests` (it builds the operando-modem-shim product) before `swift test --skip-build`")
        }
    }

    // MARK: - Helpers

    /// Runs a command to completion; returns its status and standard output.
    @discardableResult
    static func run(_ executable: String, _ arguments: [String]) throws -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        let stdout = Pipe()
        process.standardOutput = stdout
        process.standardError = FileHandle.nullDevice
        try process.run()
        let data = stdout.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: data, as: UTF8.self))
    }

    static func makeTemporaryDirectory(prefix: String) throws -> String {
        // Short paths: a Unix socket path must fit in 108 bytes.
        var template = Array("/tmp/\(prefix)-XXXXXX".utf8CString)
        guard let result = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw HarnessError("mkdtemp failed: errno \(errno)")
        }
        return String(cString: result)
    }

    static func shellQuoted(_ word: String) -> String {
        let safe = word.allSatisfy { $0.isLetter || $0.isNumber || "-_./:=,+@{}%".contains($0) }
        return safe && !word.isEmpty ? word : "'" + word.replacingOccurrences(of: "'", with: "'\\''") + "'"
    }

    /// One request line and one answer line on a Unix stream socket.
    static func request(socketPath: String, line: String, timeout: TimeInterval) throws -> String {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw HarnessError("socket() failed: errno \(errno)") }
        defer { close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let pathBytes = Array(socketPath.utf8)
        guard pathBytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
            throw HarnessError("socket path too long: \(socketPath)")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (index, byte) in pathBytes.enumerated() { raw[index] = byte }
        }
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard connected == 0 else { throw HarnessError("cannot connect to \(socketPath): errno \(errno)") }
        let bytes = Array((line + "\n").utf8)
        guard write(fd, bytes, bytes.count) == bytes.count else { throw HarnessError("write to \(socketPath) failed") }
        var answer: [UInt8] = []
        let deadline = Date().addingTimeInterval(timeout)
        while !answer.contains(UInt8(ascii: "\n")) {
            let left = Int32(max(0, deadline.timeIntervalSinceNow) * 1000)
            var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&poller, 1, left) > 0 else { throw HarnessError("no answer to \"\(line)\" within \(timeout) s") }
            var buffer = [UInt8](repeating: 0, count: 1024)
            let count = read(fd, &buffer, buffer.count)
            if count <= 0 { break }
            answer += buffer[0..<count]
        }
        return String(decoding: answer, as: UTF8.self).trimmingCharacters(in: .newlines)
    }
}

/// Builds the C probes in Tests/Support (usbprobe.c, ...) once per test run with the system's cc,
/// next to the test bundle (so nothing is left in /tmp).
enum CProbe {
    private static let lock = NSLock()
    nonisolated(unsafe) private static var built: [String: String] = [:]  // guarded by lock

    /// Compiles Tests/Support/<name>.c with `pkg-config --cflags --libs <pkgConfig>`; returns the
    /// executable's path.
    static func path(_ name: String, pkgConfig: String, extraFlags: [String] = []) throws -> String {
        lock.lock()
        defer { lock.unlock() }
        if let path = built[name] { return path }
        let output = UmockdevHarness.buildDirectory + "/" + name
        let temporary = output + ".\(getpid())"
        let flags = try UmockdevHarness.run("/usr/bin/env", ["pkg-config", "--cflags", "--libs", pkgConfig])
        guard flags.status == 0 else { throw HarnessError("pkg-config \(pkgConfig) failed; run scripts/install-deps.sh") }
        let source = UmockdevHarness.packageRoot + "/Tests/Support/\(name).c"
        let words = flags.output.split(whereSeparator: { $0 == " " || $0 == "\n" }).map(String.init)
        let compile = try UmockdevHarness.run("/usr/bin/env", ["cc", "-O1", "-o", temporary, source] + words + extraFlags)
        guard compile.status == 0 else { throw HarnessError("compiling \(source) failed (status \(compile.status))") }
        guard rename(temporary, output) == 0 else { throw HarnessError("cannot move \(temporary) to \(output): errno \(errno)") }
        built[name] = output
        return output
    }
}

/// Reads lines from a pipe on a background thread; `nextLine` waits with a timeout.
final class LineReader: @unchecked Sendable {
    private let handle: FileHandle
    private let condition = NSCondition()
    private var buffer = Data()  // guarded by condition
    private var ended = false  // guarded by condition

    init(_ handle: FileHandle) { self.handle = handle }

    func start() {
        let thread = Thread { [self] in
            while true {
                let data = handle.availableData
                condition.lock()
                if data.isEmpty { ended = true } else { buffer.append(data) }
                condition.broadcast()
                condition.unlock()
                if data.isEmpty { return }
            }
        }
        thread.start()
    }

    func nextLine(timeout: TimeInterval) -> String? {
        let deadline = Date().addingTimeInterval(timeout)
        condition.lock()
        defer { condition.unlock() }
        while true {
            if let newline = buffer.firstIndex(of: UInt8(ascii: "\n")) {
                let line = buffer[buffer.startIndex..<newline]
                buffer.removeSubrange(buffer.startIndex...newline)
                return String(decoding: line, as: UTF8.self)
            }
            if ended || !condition.wait(until: deadline) { return nil }
        }
    }
}
