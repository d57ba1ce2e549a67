import Foundation
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// Self-tests of the emulated-hardware harness (Tests/Support/umockdev-harness.py and the
/// operando-modem-shim preload): a small C program using the real libserialport
/// (Tests/Support/serialprobe.c) runs under the harness and is driven line by line.
final class HarnessSelfTests: XCTestCase {
    static let lineSim = UmockdevHarness.packageRoot + "/Tests/Support/line-sim.py"

    private var harnesses: [UmockdevHarness] = []

    override func tearDown() {
        for harness in harnesses { harness.stop() }
        harnesses = []
        super.tearDown()
    }

    // MARK: - Environment

    func testEnvironment_hasUmockdevPythonBindingsLibserialportAndTheShim() throws {
        try UmockdevHarness.requireEnvironment()
    }

    // MARK: - Listing

    func testListPorts_reportsEmulatedDevicesAsUSBWithTheDeclaredIdentity() throws {
        let probe = try startProbe(devices: [
            EmulatedSerialDevice(name: "ttyUSB0", serial: "A10K1ABC"),
            EmulatedSerialDevice(name: "ttyACM0", vid: "2341", pid: "0043", manufacturer: "Arduino (www.arduino.cc)",
                                 product: "Arduino Uno", serial: "75735323"),
        ])
        let ports = try probe.list()
        XCTAssertEqual(Set(ports.keys), ["/dev/ttyUSB0", "/dev/ttyACM0"], "virtual ttys must not be listed")

        let ftdi = try XCTUnwrap(ports["/dev/ttyUSB0"])
        XCTAssertEqual(ftdi["transport"] as? String, "usb")
        XCTAssertEqual(ftdi["vid"] as? String, "0403")
        XCTAssertEqual(ftdi["pid"] as? String, "6001")
        XCTAssertEqual(ftdi["serial"] as? String, "A10K1ABC")
        XCTAssertEqual(ftdi["manufacturer"] as? String, "FTDI")
        XCTAssertEqual(ftdi["product"] as? String, "FT232R USB UART")
        XCTAssertEqual(ftdi["description"] as? String, "FT232R USB UART - A10K1ABC")
        XCTAssertEqual(ftdi["bus"] as? Int, 1)
        XCTAssertEqual(ftdi["address"] as? Int, 2)

        let acm = try XCTUnwrap(ports["/dev/ttyACM0"])
        XCTAssertEqual(acm["transport"] as? String, "usb")
        XCTAssertEqual(acm["vid"] as? String, "2341")
        XCTAssertEqual(acm["pid"] as? String, "0043")
        XCTAssertEqual(acm["serial"] as? String, "75735323")
        XCTAssertEqual(acm["manufacturer"] as? String, "Arduino (www.arduino.cc)")
        XCTAssertEqual(acm["product"] as? String, "Arduino Uno")
        XCTAssertEqual(acm["address"] as? Int, 3)
    }

    // MARK: - Open and configure

    func testOpenAndConfigure_withShim_gives115200_8N1_noFlowControl_DTRAndRTSOn() throws {
        let probe = try startProbe(devices: [EmulatedSerialDevice()])
        try probe.ok("open /dev/ttyUSB0")
        let config = try probe.ok("config 115200")
        XCTAssertEqual(config["baud"] as? Int, 115_200)
        XCTAssertEqual(config["bits"] as? Int, 8)
        XCTAssertEqual(config["parity"] as? String, "none")
        XCTAssertEqual(config["stopbits"] as? Int, 1)
        XCTAssertEqual(config["xonxoff"] as? Int, 0)
        XCTAssertEqual(config["dtr"] as? Int, 1)
        XCTAssertEqual(config["rts"] as? Int, 1)
        XCTAssertEqual(config["signals_ok"] as? Bool, true)
        XCTAssertEqual(config["cts"] as? Int, 1, "the shim reports a present device: CTS, DSR and DCD asserted")
        XCTAssertEqual(config["dsr"] as? Int, 1)
        XCTAssertEqual(config["dcd"] as? Int, 1)

        let dtrOff = try probe.ok("dtr 0")
        XCTAssertEqual(dtrOff["dtr"] as? Int, 0)
        XCTAssertEqual(dtrOff["rts"] as? Int, 1)
        let rtsOff = try probe.ok("rts 0")
        XCTAssertEqual(rtsOff["rts"] as? Int, 0)
        XCTAssertEqual(rtsOff["dtr"] as? Int, 0)

        let nonStandard = try probe.ok("config 250000")
        XCTAssertEqual(nonStandard["baud"] as? Int, 250_000, "non-standard rates go through TCSETS2")

        let shim = try probe.ok("shim")
        XCTAssertEqual(shim["loaded"] as? Bool, true)
        XCTAssertGreaterThan(shim["emulated"] as? Int ?? 0, 0, "the shim answered modem-line ioctls")
    }

    func testOpen_withoutShim_failsOnTheModemLineIoctl() throws {
        let probe = try startProbe(devices: [EmulatedSerialDevice()], shim: false)
        XCTAssertEqual(try probe.list().keys.sorted(), ["/dev/ttyUSB0"], "listing needs no shim")
        let open = try probe.command("open /dev/ttyUSB0")
        XCTAssertEqual(open["ok"] as? Bool, false, "sp_open must fail on a pty without the shim")
        XCTAssertTrue((open["error"] as? String ?? "").contains("Inappropriate ioctl"), "\(open)")
        let shim = try probe.ok("shim")
        XCTAssertEqual(shim["loaded"] as? Bool, false)
    }

    // MARK: - Data

    func testWriteAndRead_echoSimulator_returnsTheLine() throws {
        let probe = try startProbe(devices: [EmulatedSerialDevice()])
        try probe.openConfigured("/dev/ttyUSB0")
        try probe.ok("write " + hex("/1 get pos\n"))
        let line = try probe.ok("readline 2000")
        XCTAssertEqual(line["text"] as? String, "/1 get pos\n")
        XCTAssertEqual(line["complete"] as? Bool, true)
    }

    func testGarbage_injectedBytesReachTheHost() throws {
        let probe = try startProbe(devices: [EmulatedSerialDevice(simulator: .silent)])
        try probe.openConfigured("/dev/ttyUSB0")
        try probe.harness.control("garbage ttyUSB0 00ff7e0d0a")
        let read = try probe.ok("read 5 2000")
        XCTAssertEqual(read["hex"] as? String, "00ff7e0d0a")
    }

    func testStopAnswering_hostReadsNothing_resumeAnsweringRestoresReplies() throws {
        let probe = try startProbe(devices: [EmulatedSerialDevice()])
        try probe.openConfigured("/dev/ttyUSB0")
        try probe.harness.control("stop-answering ttyUSB0")
        try probe.ok("write " + hex("ping\n"))
        let silent = try probe.ok("readline 300")
        XCTAssertEqual(silent["text"] as? String, "", "a device that stopped answering sends nothing")
        XCTAssertTrue(try probe.harness.control("status").contains("ttyUSB0=plugged,stopped"))
        XCTAssertEqual(try probe.list().keys.sorted(), ["/dev/ttyUSB0"], "it stays plugged")

        try probe.harness.control("resume-answering ttyUSB0")
        try probe.ok("write " + hex("pong\n"))
        let answer = try probe.ok("readline 2000")
        XCTAssertEqual(answer["text"] as? String, "pong\n", "bytes sent while it was not answering are lost")
    }

    // MARK: - Unplug and replug

    func testUnplug_hangsUpTheOpenPortAndRemovesIt_replugRestoresIt() throws {
        let probe = try startProbe(devices: [EmulatedSerialDevice(serial: "A10K1ABC")])
        try probe.openConfigured("/dev/ttyUSB0")
        try probe.ok("write " + hex("before\n"))
        XCTAssertEqual(try probe.ok("readline 2000")["text"] as? String, "before\n")

        try probe.harness.control("unplug ttyUSB0")
        let write = try probe.command("write " + hex("after\n"))
        XCTAssertEqual(write["ok"] as? Bool, false, "writing to an unplugged device fails")
        XCTAssertTrue((write["error"] as? String ?? "").contains("Input/output error"), "\(write)")
        let read = try probe.ok("read 1 200")
        XCTAssertEqual(read["count"] as? Int, 0, "reading an unplugged device gives end of file")
        let wait = try probe.ok("wait 200")
        XCTAssertEqual(wait["pollhup"] as? Int, 1, "poll reports the hang-up")
        XCTAssertEqual(try probe.command("signals")["ok"] as? Bool, false, "modem lines of a hung-up tty fail (EIO)")
        XCTAssertEqual(try probe.list().count, 0, "an unplugged device is not listed")
        let reopen = try probe.command("open /dev/ttyUSB0")
        XCTAssertEqual(reopen["ok"] as? Bool, false, "an unplugged device cannot be opened")

        let replug = try probe.harness.control("replug ttyUSB0")
        XCTAssertTrue(replug.contains("devnum=3"), "a replugged device gets a new address: \(replug)")
        let ports = try probe.list()
        XCTAssertEqual(ports["/dev/ttyUSB0"]?["serial"] as? String, "A10K1ABC")
        XCTAssertEqual(ports["/dev/ttyUSB0"]?["address"] as? Int, 3)
        try probe.openConfigured("/dev/ttyUSB0")
        try probe.ok("write " + hex("again\n"))
        XCTAssertEqual(try probe.ok("readline 2000")["text"] as? String, "again\n")
    }

    // MARK: - Simulator processes

    func testExecSimulators_stdioFdAndPtyLinkModes_answerAndAreRestartedOnReplug() throws {
        let sim = [UmockdevHarness.python, Self.lineSim]
        let probe = try startProbe(devices: [
            EmulatedSerialDevice(name: "ttyUSB0", serial: "S0", simulator: .exec(sim + ["--stdio", "--tag", "stdio"])),
            EmulatedSerialDevice(name: "ttyUSB1", serial: "S1", simulator: .exec(sim + ["--fd", "{fd}", "--tag", "fd"])),
            EmulatedSerialDevice(name: "ttyUSB2", serial: "S2", simulator: .exec(sim + ["--pty", "{link}", "--tag", "pty"])),
        ])
        var pids: [String: String] = [:]
        for (index, mode) in ["stdio", "fd", "pty"].enumerated() {
            try probe.openConfigured("/dev/ttyUSB\(index)")
            try probe.ok("write " + hex("hello\n"))
            XCTAssertEqual(try probe.ok("readline 3000")["text"] as? String, "ECHO hello (\(mode))\r\n")
            try probe.ok("write " + hex("pid\n"))
            pids[mode] = try probe.ok("readline 3000")["text"] as? String
            XCTAssertTrue(pids[mode]?.hasPrefix("PID ") == true, "\(mode): \(pids[mode] ?? "nil")")
        }
        for (index, mode) in ["stdio", "fd", "pty"].enumerated() {
            try probe.harness.control("unplug ttyUSB\(index)")
            try probe.harness.control("replug ttyUSB\(index)")
            try probe.openConfigured("/dev/ttyUSB\(index)")
            try probe.ok("write " + hex("pid\n"))
            let pid = try probe.ok("readline 3000")["text"] as? String
            XCTAssertTrue(pid?.hasPrefix("PID ") == true, "\(mode) after replug: \(pid ?? "nil")")
            XCTAssertNotEqual(pid, pids[mode], "\(mode): a replug starts a new simulator process")
        }
    }

    func testExecSimulator_directMasterMode_seesTheHostsBaudRate_stopAnsweringPausesIt() throws {
        let probe = try startProbe(devices: [
            EmulatedSerialDevice(simulator: .exec([UmockdevHarness.python, Self.lineSim, "--fd", "{master}", "--tag", "direct"]))
        ])
        try probe.openConfigured("/dev/ttyUSB0")
        try probe.ok("write " + hex("baud\n"))
        XCTAssertEqual(try probe.ok("readline 3000")["text"] as? String, "BAUD B115200 (direct)\r\n")
        try probe.ok("config 9600")
        try probe.ok("write " + hex("baud\n"))
        XCTAssertEqual(try probe.ok("readline 3000")["text"] as? String, "BAUD B9600 (direct)\r\n",
                       "a simulator holding the pty master sees the line settings the host chose")

        try probe.harness.control("stop-answering ttyUSB0")
        try probe.ok("write " + hex("late\n"))
        XCTAssertEqual(try probe.ok("readline 300")["text"] as? String, "")
        try probe.harness.control("resume-answering ttyUSB0")
        XCTAssertEqual(try probe.ok("readline 3000")["text"] as? String, "ECHO late (direct)\r\n",
                       "in direct mode a paused simulator answers late")
        try probe.harness.control("garbage ttyUSB0 2a0a")
        XCTAssertEqual(try probe.ok("readline 3000")["text"] as? String, "*\n")
    }

    func testSocketSimulator_unixServer_isReconnectedOnReplug() throws {
        try UmockdevHarness.requireEnvironment()
        let directory = try UmockdevHarness.makeTemporaryDirectory(prefix: "sim")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let socketPath = directory + "/sim.sock"
        let server = Process()
        server.executableURL = URL(fileURLWithPath: UmockdevHarness.python)
        server.arguments = [Self.lineSim, "--listen", "unix:" + socketPath, "--tag", "unix"]
        try server.run()
        defer { server.terminate(); server.waitUntilExit() }
        for _ in 0..<200 where !FileManager.default.fileExists(atPath: socketPath) { usleep(20_000) }

        let probe = try startProbe(devices: [EmulatedSerialDevice(simulator: .unix(socketPath))])
        try probe.openConfigured("/dev/ttyUSB0")
        try probe.ok("write " + hex("one\n"))
        XCTAssertEqual(try probe.ok("readline 3000")["text"] as? String, "ECHO one (unix)\r\n")
        try probe.harness.control("unplug ttyUSB0")
        try probe.harness.control("replug ttyUSB0")
        try probe.openConfigured("/dev/ttyUSB0")
        try probe.ok("write " + hex("two\n"))
        XCTAssertEqual(try probe.ok("readline 3000")["text"] as? String, "ECHO two (unix)\r\n")
    }

    // MARK: - The program under test

    func testExitStatus_isTheProgramsStatus() throws {
        try UmockdevHarness.requireEnvironment()
        let harness = try UmockdevHarness(devices: [EmulatedSerialDevice()], program: ["/bin/sh", "-c", "exit 7"])
        harnesses.append(harness)
        XCTAssertEqual(try harness.waitForExit(), 7)
    }

    func testProgramEnvironment_hasTestbedPreloadsAndControlSocket() throws {
        try UmockdevHarness.requireEnvironment()
        let script = "echo \"$UMOCKDEV_DIR|$LD_PRELOAD|$OPERANDO_HARNESS_CONTROL|$OPERANDO_HARNESS_DEVICES\""
        let harness = try UmockdevHarness(devices: [EmulatedSerialDevice(), EmulatedSerialDevice(name: "ttyUSB1")],
                                          program: ["/bin/sh", "-c", script])
        harnesses.append(harness)
        let fields = try XCTUnwrap(harness.nextLine()).split(separator: "|", omittingEmptySubsequences: false).map(String.init)
        XCTAssertEqual(fields.count, 4)
        XCTAssertTrue(fields[0].hasPrefix("/tmp/umockdev."), fields[0])
        XCTAssertEqual(fields[1], UmockdevHarness.shimPath + ":libumockdev-preload.so.0", "the shim comes first")
        XCTAssertEqual(fields[2], harness.controlPath)
        XCTAssertEqual(fields[3], "/dev/ttyUSB0,/dev/ttyUSB1")
        XCTAssertEqual(try harness.waitForExit(), 0)
    }

    // MARK: - Helpers

    private func startProbe(devices: [EmulatedSerialDevice], shim: Bool = true) throws -> Probe {
        try UmockdevHarness.requireEnvironment()
        let probe = try SerialProbe.path()
        let harness = try UmockdevHarness(devices: devices, program: [probe], shim: shim)
        harnesses.append(harness)
        try harness.waitUntilReady()
        return Probe(harness: harness)
    }

    private func hex(_ text: String) -> String { text.utf8.map { String(format: "%02x", $0) }.joined() }
}

/// The serialprobe program under test (Tests/Support/serialprobe.c), talking JSON lines.
struct Probe {
    let harness: UmockdevHarness

    /// Sends a command; returns the decoded answer whatever its "ok".
    @discardableResult
    func command(_ line: String, timeout: TimeInterval = 15) throws -> [String: Any] {
        harness.send(line)
        guard let answer = harness.nextLine(timeout: timeout) else {
            throw HarnessError("serialprobe did not answer \"\(line)\" within \(timeout) s")
        }
        guard let object = try JSONSerialization.jsonObject(with: Data(answer.utf8)) as? [String: Any] else {
            throw HarnessError("serialprobe answered \"\(line)\" with \(answer)")
        }
        return object
    }

    /// Sends a command that must succeed.
    @discardableResult
    func ok(_ line: String) throws -> [String: Any] {
        let answer = try command(line)
        guard answer["ok"] as? Bool == true else { throw HarnessError("serialprobe \"\(line)\" failed: \(answer)") }
        return answer
    }

    /// sp_list_ports, keyed by port name.
    func list() throws -> [String: [String: Any]] {
        let ports = try ok("list")["ports"] as? [[String: Any]] ?? []
        var byName: [String: [String: Any]] = [:]
        for port in ports { byName[port["name"] as? String ?? "?"] = port }
        return byName
    }

    func openConfigured(_ name: String) throws {
        try ok("open " + name)
        try ok("config 115200")
    }
}

/// Builds serialprobe.c once per test run with the system's cc and libserialport, next to the
/// test bundle (so nothing is left in /tmp).
enum SerialProbe {
    static func path() throws -> String { try CProbe.path("serialprobe", pkgConfig: "libserialport", extraFlags: ["-ldl"]) }
}
