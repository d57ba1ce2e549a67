import Foundation
import OperandoControl
import OperandoCore
import OperandoIO
import OperandoStore
import OperandoTestSupport
import OperandoTimeline
import XCTest

/// The whole daemon on its real libserialport path: an emulated FTDI /dev/ttyUSB0 (umockdev,
/// with USB parents), the Zaber simulator behind it, operandod under the preloads.
final class DaemonSerialTests: XCTestCase {
    private func config(transport: String) -> String {
        """
        [daemon]
        memory_budget_mb = 64
        ring_mb = 2
        sync_interval_ms = 100
        reconnect_max_s = 1
        log_level = "debug"

        [[device]]
        name = "stage"
        driver = "zaber-ascii"
        transport = "\(transport)"
        [device.settings]
        poll_hz = 20
        """
    }

    private struct Setup {
        let harness: UmockdevHarness
        let client: ControlClient
        let directory: String
    }

    private func start(transport: String, serial: String = "ZB0001") throws -> Setup {
        try start(config: config(transport: transport), device: "stage", serial: serial, simulator: ["zaber", "--pty", "{link}"])
    }

    /// operandod with `config` under the harness, one emulated FTDI ttyUSB0 with serial number
    /// `serial` served by `operando-sim SIMULATOR…`; returns once `device` is connected.
    private func start(config: String, device: String, serial: String, simulator: [String]) throws -> Setup {
        try UmockdevHarness.requireEnvironment()
        let directory = try UmockdevHarness.makeTemporaryDirectory(prefix: "odserial")
        let configPath = directory + "/operandod.toml"
        try FileSystem.writeAtomically(configPath, bytes: Array(config.utf8))
        let socket = directory + "/control.sock"
        let harness = try UmockdevHarness(
            devices: [EmulatedSerialDevice(name: "ttyUSB0", serial: serial, simulator: .exec([try Binaries.path("operando-sim")] + simulator))],
            program: [try Binaries.path("operandod"), "--config", configPath, "--socket", socket, "--data-dir", directory + "/data"])
        try harness.waitUntilReady()
        let client = ControlClient(socket: socket)
        try client.waitForDevice(device, "connected") { $0.state == "connected" }
        return Setup(harness: harness, client: client, directory: directory)
    }

    private func written(_ c: ControlClient) throws -> UInt64 {
        try c.json(StatusResult.self, ["status"]).streams.first { $0.name == "stage/position" }?.written ?? 0
    }

    private func position(_ c: ControlClient) throws -> Double? {
        try c.json(TailResult.self, ["tail", "stage/position"]).entries.last?.values?.first
    }

    func testPorts_listTheEmulatedBridgeWithItsIdentityAndTheDeviceUsingIt() throws {
        let s = try start(transport: "serial:usb:0403:6001:ZB0001")
        defer { s.harness.stop(); try? FileManager.default.removeItem(atPath: s.directory) }
        let ports = try s.client.json([PortEntry].self, ["ports"])
        let entry = try XCTUnwrap(ports.first { $0.port.name == "/dev/ttyUSB0" }, "\(ports)")
        XCTAssertEqual(entry.port.transport, "usb")
        XCTAssertEqual(entry.port.vendorID, 0x0403)
        XCTAssertEqual(entry.port.productID, 0x6001)
        XCTAssertEqual(entry.port.serialNumber, "ZB0001")
        XCTAssertEqual(entry.port.manufacturer, "FTDI")
        XCTAssertEqual(entry.device, "stage")
        XCTAssertEqual(entry.port.usbPortPath, "1-1", "sysfs port path of the emulated bridge")
        XCTAssertNotNil(entry.recognisedAs)
        let table = try s.client.ctl(["ports"])
        XCTAssertEqual(table.status, 0)
        XCTAssertTrue(table.out.contains("0403:6001") && table.out.contains("ZB0001") && table.out.contains("stage"), table.out)
    }

    func testZaberOnEmulatedTtyUSB_foundByIdentity_recordsMovesAndSurvivesGarbageSilenceAndUnplug() throws {
        let s = try start(transport: "serial:usb:0403:6001:ZB0001")
        defer { s.harness.stop(); try? FileManager.default.removeItem(atPath: s.directory) }
        let c = s.client
        let device = try XCTUnwrap(c.json([DeviceInfo].self, ["devices"]).first)
        XCTAssertEqual(device.transport, "serial:usb:0403:6001:ZB0001")
        XCTAssertNotNil(device.serialNumber)

        let run = try c.json(RunInfo.self, ["run", "start", "stage-run"])
        try c.waitForStatus("positions recorded") { $0.streams.first { $0.name == "stage/position" }.map { $0.written > 10 } ?? false }

        // Home, then a move in mm: the stage gets there (positions are recorded in µm).
        XCTAssertEqual(try c.ctl(["home", "stage"]).status, 0)
        let moved = try c.json(DeviceCommandResult.self, ["move", "stage", "5mm"])
        XCTAssertEqual(moved.values["target_um"], .number(5000))
        for _ in 0..<400 {
            if let p = try position(c), abs(p - 5000) < 1 { break }
            ThreadSleep.sleep(.milliseconds(50))
        }
        XCTAssertEqual(try position(c) ?? -1, 5000, accuracy: 1)
        // A target outside travel is refused by the device, with the reason.
        let refused = try c.ctl(["move", "stage", "100000mm"])
        XCTAssertEqual(refused.status, 1)
        XCTAssertTrue(refused.err.contains("BADDATA"), refused.err)

        // Garbage on the line: recorded as an alarm; data keeps coming.
        var before = try written(c)
        try s.harness.control("garbage ttyUSB0 " + Array("noise\u{7f}\u{1}\r\n".utf8).map { String(format: "%02x", $0) }.joined())
        try c.waitForStatus("data after garbage") { ($0.streams.first { $0.name == "stage/position" }?.written ?? 0) > before + 10 }

        // The device stops answering: the daemon notices, and recovers when it answers again.
        try s.harness.control("stop-answering ttyUSB0")
        try c.waitForDevice("stage", "noticed the silence") { $0.state == "disconnected" }
        try s.harness.control("resume-answering ttyUSB0")
        try c.waitForDevice("stage", "answering again") { $0.state == "connected" }

        // Unplug mid-run and plug back in (a new bus address): the same run goes on.
        try s.harness.control("unplug ttyUSB0")
        try c.waitForDevice("stage", "unplugged") { $0.state == "disconnected" }
        XCTAssertTrue(try c.json([PortEntry].self, ["ports"]).allSatisfy { $0.port.name != "/dev/ttyUSB0" })
        before = try written(c)
        try s.harness.control("replug ttyUSB0")
        try c.waitForDevice("stage", "replugged") { $0.state == "connected" }
        try c.waitForStatus("data after replug") { ($0.streams.first { $0.name == "stage/position" }?.written ?? 0) > before + 10 }
        XCTAssertGreaterThanOrEqual(try c.json([DeviceInfo].self, ["devices"]).first?.reconnects ?? 0, 2)

        assertNothingLost(try c.json(RunStopResult.self, ["run", "stop"]))
        let disk = try RunOnDisk(directory: run.directory)
        XCTAssertEqual(disk.damaged, 0)
        disk.assertContiguous("stage/position")
        let events = disk.events.filter { $0.source == "stage" }
        XCTAssertTrue(events.contains { $0.kind == .stimulus && $0.values["command"] == .string("home") }, "\(events.map(\.message))")
        XCTAssertTrue(events.contains { $0.kind == .stimulus && $0.values["target_um"]?.doubleValue == 5000 })
        XCTAssertTrue(events.contains { $0.kind == .stateChange && $0.message.contains("stopped moving") }, "\(events.map { "\($0.kind) \($0.message)" })")
        XCTAssertTrue(events.contains { $0.kind == .alarm && $0.message.contains("noise") }, "\(events.filter { $0.kind == .alarm }.map(\.message))")
        XCTAssertGreaterThanOrEqual(events.filter { $0.kind == .gap }.count, 2, "silence and unplug each leave a gap")
        XCTAssertTrue(events.contains { $0.kind == .stateChange && $0.message.contains("libserialport") }, "the connected event says how the port was opened")
        XCTAssertEqual(try s.harness.control("status").isEmpty, false)
    }

    /// DTR and RTS as trigger outputs, through libserialport on the emulated bridge: every edge
    /// is a stimulus event whose time brackets the moment the line really changed (the modem
    /// shim logs each change on CLOCK_MONOTONIC_RAW).
    func testTriggerEdges_onDTRAndRTS_areRecordedAtTheMomentTheLinesChange() throws {
        let log = try UmockdevHarness.makeTemporaryDirectory(prefix: "odmodem") + "/modem.log"
        setenv("OPERANDO_MODEM_SHIM_LOG", log, 1)
        defer { unsetenv("OPERANDO_MODEM_SHIM_LOG") }
        let s = try start(transport: "serial:usb:0403:6001:ZB0001")
        defer { s.harness.stop(); try? FileManager.default.removeItem(atPath: s.directory) }
        let c = s.client
        let run = try c.json(RunInfo.self, ["run", "start", "triggers"])
        let pulse = try c.json(DeviceCommandResult.self, ["trigger", "stage", "--line", "dtr", "--pulse-ms", "20"])
        XCTAssertEqual(pulse.values["edges"], .number(2))
        XCTAssertEqual(try c.ctl(["trigger", "stage", "--line", "rts", "--release"]).status, 0)
        let bad = try c.ctl(["trigger", "stage", "--line", "cts"])
        XCTAssertNotEqual(bad.status, 0)
        XCTAssertTrue(bad.err.contains("\"dtr\" or \"rts\""), bad.err)
        let gpio = try c.ctl(["trigger", "stage", "--line", "gpio1"])
        XCTAssertNotEqual(gpio.status, 0)
        XCTAssertTrue(gpio.err.contains("no command \"trigger\""), gpio.err)
        _ = try c.json(RunStopResult.self, ["run", "stop"])

        let edges = try RunOnDisk(directory: run.directory).events.filter { $0.kind == .stimulus && $0.values["command"] == .string("trigger") }
        XCTAssertEqual(edges.map(\.message), ["trigger: DTR asserted", "trigger: DTR released", "trigger: RTS released"])
        // "<ns> <fd> <request> 0x<argument> 0x<bits>" per change the shim answered.
        let changes = try String(contentsOfFile: log, encoding: .utf8).split(separator: "\n").map { $0.split(separator: " ") }
        for edge in edges {
            let u = try XCTUnwrap(edge.uncertaintyNs, edge.message)
            let bit = edge.values["line"] == .string("dtr") ? 0x002 : 0x004
            let request = edge.values["edge"] == .string("asserted") ? "TIOCMBIS" : "TIOCMBIC"
            let matching = changes.filter { $0.count == 5 && $0[2] == request && (Int($0[3].dropFirst(2), radix: 16) ?? 0) & bit != 0 }.compactMap { Int64($0[0]) }
            XCTAssertTrue(
                matching.contains { abs($0 - edge.hostTime.nanoseconds) <= u },
                "\(edge.message) at \(edge.hostTime.nanoseconds) ± \(u) ns; the line changed at \(matching)")
        }
        // The pulse lasted at least the 20 ms asked for.
        XCTAssertGreaterThanOrEqual(edges[1].hostTime.nanoseconds - edges[0].hostTime.nanoseconds, 20_000_000)
    }

    /// The PalmSens driver on its real libserialport path: an emulated EmStat Pico (FTDI bridge,
    /// 230400 baud) with the MethodSCRIPT simulator behind it runs a short cycling protocol.
    func testPalmSensOnEmulatedTtyUSB_runsACyclingProtocolAndRecordsEveryStep() throws {
        let s = try start(config: """
            [daemon]
            memory_budget_mb = 64
            ring_mb = 2
            sync_interval_ms = 100

            [simulation]
            time_scale = 3000
            initial_soc = 0.5

            [[device]]
            name = "pstat"
            driver = "palmsens-methodscript"
            transport = "serial:usb:0403:6001:PS0001"
            """, device: "pstat", serial: "PS0001", simulator: ["palmsens-methodscript", "--pty", "{link}", "--time-scale", "3000"])
        defer { s.harness.stop(); try? FileManager.default.removeItem(atPath: s.directory) }
        let c = s.client
        let protocolPath = s.directory + "/cycling.toml"
        try FileSystem.writeAtomically(protocolPath, bytes: Array("""
            kind = "protocol"
            [[steps]]
            kind = "ocp"
            duration_s = 1
            interval_s = 0.1
            [[steps]]
            kind = "gcd"
            current_a = 0.002
            upper_limit_v = 3.95
            lower_limit_v = 3.7
            rest_s = 0.5
            cycles = 2
            interval_s = 0.05
            max_half_cycle_s = 20
            """.utf8))
        let device = try XCTUnwrap(c.json([DeviceInfo].self, ["devices"]).first)
        XCTAssertEqual(device.model, "EmStat Pico")
        let run = try c.json(RunInfo.self, ["run", "start", "cycling"])
        let started = try c.json(DeviceCommandResult.self, ["technique", "pstat", protocolPath])
        XCTAssertEqual(started.values["technique"], .string("protocol"))
        try c.waitForStatus("the protocol is running") { $0.activities?["pstat"]?["running"] == .bool(true) }
        try c.waitForStatus("the protocol finished", attempts: 1200) { $0.activities?["pstat"]?["running"] == .bool(false) }
        _ = try c.json(RunStopResult.self, ["run", "stop"])

        let disk = try RunOnDisk(directory: run.directory)
        XCTAssertEqual(disk.damaged, 0)
        disk.assertContiguous("pstat/ei")
        let samples = disk.stream("pstat/ei").map { r in r.payload.withUnsafeBytes { b in (0..<7).map { b.loadUnaligned(fromByteOffset: 8 * $0, as: Double.self) } } }
        XCTAssertGreaterThan(samples.count, 50)
        XCTAssertTrue(disk.stream("pstat/ei").allSatisfy { $0.header.deviceTime != nil }, "every package carries the device timer")
        let cycles = Set(samples.map { $0[3] })
        XCTAssertTrue(cycles.contains(2), "two cycles ran: \(cycles.sorted())")
        let voltages = samples.map { $0[0] }.filter(\.isFinite)
        XCTAssertGreaterThan(voltages.max() ?? 0, 3.9, "charged up to the upper limit")
        XCTAssertLessThan(voltages.min() ?? 9, 3.75, "discharged down to the lower limit")
        let events = disk.events.filter { $0.source == "pstat" }
        XCTAssertTrue(events.contains { $0.kind == .stimulus && $0.message.contains("gcd-charge") }, "\(events.map(\.message))")
        XCTAssertTrue(events.contains { $0.message.contains("limit reached") || $0.message.contains("LIMIT") }, "\(events.map(\.message))")
        XCTAssertTrue(events.contains { $0.message.contains("script finished") }, "\(events.map(\.message))")
        // Every step is on the common timeline: its device time mapped through the refitted clock,
        // with an uncertainty (live, the first step of a script can precede the first stamp of
        // the script's new timer).
        let clock = try XCTUnwrap(RunClocks.fit(RunReader(directory: run.directory)).device("pstat"))
        XCTAssertEqual(clock.model, .oneWay)
        for e in events where e.kind == .stimulus && e.deviceTime != nil {
            XCTAssertNotNil(clock.map(deviceTime: e.deviceTime, hostTime: e.hostTime).uncertaintyNs, e.message)
        }
    }

    /// The Amptek driver over RS-232 (here an emulated FTDI bridge): the same packets found in a
    /// byte stream, with the simulator on a pseudo-terminal (`operando-sim amptek --pty`).
    func testAmptekOnEmulatedTtyUSB_findsItsPacketsInTheByteStream() throws {
        let s = try start(config: """
            [daemon]
            memory_budget_mb = 64
            ring_mb = 2
            sync_interval_ms = 100

            [[device]]
            name = "xrf"
            driver = "amptek-dp5"
            transport = "serial:usb:0403:6001:DP5RS232"
            [device.settings]
            channels = 512
            poll_ms = 100
            """, device: "xrf", serial: "DP5RS232", simulator: ["amptek", "--name", "DP5-4242", "--pty", "{link}"])
        defer { s.harness.stop(); try? FileManager.default.removeItem(atPath: s.directory) }
        let c = s.client
        let device = try XCTUnwrap(c.json([DeviceInfo].self, ["devices"]).first)
        XCTAssertEqual(device.serialNumber, "4242")
        XCTAssertEqual(device.transport, "serial:usb:0403:6001:DP5RS232")
        let run = try c.json(RunInfo.self, ["run", "start", "amptek-serial"])
        try c.waitForStatus("spectra recorded") { $0.streams.first { $0.name == "xrf/spectrum" }.map { $0.written >= 10 } ?? false }
        // Garbage on the line between packets: skipped with an alarm, spectra keep coming.
        let before = try c.json(StatusResult.self, ["status"]).streams.first { $0.name == "xrf/spectrum" }?.written ?? 0
        try s.harness.control("garbage ttyUSB0 00f5fa0102")
        try c.waitForStatus("spectra after garbage") { ($0.streams.first { $0.name == "xrf/spectrum" }?.written ?? 0) > before + 5 }
        _ = try c.json(RunStopResult.self, ["run", "stop"])
        let disk = try RunOnDisk(directory: run.directory)
        XCTAssertEqual(disk.damaged, 0)
        disk.assertContiguous("xrf/spectrum")
        XCTAssertTrue(disk.stream("xrf/spectrum").allSatisfy { $0.payload.count == 512 * 4 })
        let events = disk.events.filter { $0.source == "xrf" }
        XCTAssertTrue(events.contains { $0.kind == .alarm && $0.message.contains("skipped") }, "\(events.map(\.message))")
    }

    func testTransportByPath_bySerialNumber_andByUSBPort_findTheSamePort() throws {
        for transport in ["serial:/dev/ttyUSB0", "serial:serial=ZB0001", "serial:port=1-1"] {
            let s = try start(transport: transport)
            XCTAssertEqual(try s.client.json([DeviceInfo].self, ["devices"]).first?.state, "connected", transport)
            s.harness.stop()
            try? FileManager.default.removeItem(atPath: s.directory)
        }
    }
}
