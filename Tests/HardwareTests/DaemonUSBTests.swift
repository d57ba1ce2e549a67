import Foundation
import OperandoControl
import OperandoCore
import OperandoIO
import OperandoStore
import OperandoTestSupport
import XCTest

/// The whole daemon on its real libusb path: two emulated Amptek DP5s (10c4:842a, umockdev
/// usbfs nodes whose USB request blocks the harness serves) with the Amptek simulator behind
/// each, operandod under umockdev's preload.
final class DaemonUSBTests: XCTestCase {
    private struct Setup {
        let harness: UmockdevHarness
        let client: ControlClient
        let directory: String
    }

    private func start(devices: String, serials: [String] = ["DP5-1001", "DP5-1002"]) throws -> Setup {
        try UmockdevHarness.requireEnvironment()
        let directory = try UmockdevHarness.makeTemporaryDirectory(prefix: "odusb")
        let configPath = directory + "/operandod.toml"
        try FileSystem.writeAtomically(configPath, bytes: Array(("""
            [daemon]
            memory_budget_mb = 128
            ring_mb = 4
            sync_interval_ms = 100
            reconnect_max_s = 1
            log_level = "debug"

            """ + devices).utf8))
        let socket = directory + "/control.sock"
        let simulator = try Binaries.path("operando-sim")
        let harness = try UmockdevHarness(
            devices: [],
            usbDevices: serials.enumerated().map { k, serial in
                EmulatedUSBDevice(
                    name: "amptek\(k)", vid: "10c4", pid: "842a", manufacturer: "Amptek", product: "DP5", serial: serial,
                    simulator: .exec([simulator, "amptek", "--name", serial, "--packet-fd", "{fd}"]))
            },
            program: [try Binaries.path("operandod"), "--config", configPath, "--socket", socket, "--data-dir", directory + "/data"],
            shim: false)
        try harness.waitUntilReady()
        return Setup(harness: harness, client: ControlClient(socket: socket), directory: directory)
    }

    private func written(_ c: ControlClient, _ stream: String) throws -> UInt64 {
        try c.json(StatusResult.self, ["status"]).streams.first { $0.name == stream }?.written ?? 0
    }

    func testAmptekOverEmulatedUSB_matchedBySerial_streamsSpectraAndSurvivesGarbageSilenceAndUnplug() throws {
        let s = try start(devices: """
            [[device]]
            name = "xrf"
            driver = "amptek-dp5"
            transport = "usb:10c4:842a:DP5-1002"
            [device.settings]
            channels = 2048
            poll_ms = 100
            preset_s = 0

            [[device]]
            name = "either"
            driver = "amptek-dp5"
            transport = "usb:10c4:842a"
            """)
        defer { s.harness.stop(); try? FileManager.default.removeItem(atPath: s.directory) }
        let c = s.client
        try c.waitForDevice("xrf", "connected") { $0.state == "connected" }

        // Matching: the serial number picks one of two identical devices; without it, the
        // daemon says the match is ambiguous and what to add.
        let devices = try c.json([DeviceInfo].self, ["devices"])
        let xrf = try XCTUnwrap(devices.first { $0.name == "xrf" })
        XCTAssertEqual(xrf.serialNumber, "1002", "the status packet's serial number of the simulator behind DP5-1002")
        XCTAssertTrue(xrf.model?.contains("DP5") ?? false, "\(xrf)")
        try c.waitForDevice("either", "refused as ambiguous") { ($0.lastError ?? "").contains("2 USB devices match") }
        XCTAssertTrue(try c.json([DeviceInfo].self, ["devices"]).first { $0.name == "either" }?.lastError?.contains("add the serial number") ?? false)

        // `ports` lists both emulated devices through libusb, with the device using one of them.
        let ports = try c.json([PortEntry].self, ["ports"]).filter { $0.port.transport == "libusb" }
        XCTAssertEqual(Set(ports.compactMap(\.port.serialNumber)), ["DP5-1001", "DP5-1002"], "\(ports)")
        XCTAssertEqual(ports.first { $0.port.serialNumber == "DP5-1002" }?.device, "xrf")
        XCTAssertTrue(ports.allSatisfy { $0.port.vendorID == 0x10C4 && $0.port.productID == 0x842A && $0.recognisedAs?.contains("amptek-dp5") == true })

        let run = try c.json(RunInfo.self, ["run", "start", "usb-run"])
        try c.waitForStatus("spectra recorded") { $0.streams.first { $0.name == "xrf/spectrum" }.map { $0.written >= 10 } ?? false }

        // A corrupted packet on the bulk IN endpoint: reported, skipped, and spectra keep coming.
        var before = try written(c, "xrf/spectrum")
        try s.harness.control("garbage amptek1 f5fa8101000400112233ffff")
        try c.waitForStatus("spectra after garbage") { ($0.streams.first { $0.name == "xrf/spectrum" }?.written ?? 0) > before + 5 }

        // The detector stops answering: the daemon notices, and recovers when it answers again.
        try s.harness.control("stop-answering amptek1")
        try c.waitForDevice("xrf", "noticed the silence") { $0.state == "disconnected" }
        try s.harness.control("resume-answering amptek1")
        try c.waitForDevice("xrf", "answering again") { $0.state == "connected" }

        // Unplug mid-run, plug back in at a new address: the same run goes on.
        try s.harness.control("unplug amptek1")
        try c.waitForDevice("xrf", "unplugged") { $0.state == "disconnected" }
        XCTAssertFalse(try c.json([PortEntry].self, ["ports"]).contains { $0.port.serialNumber == "DP5-1002" })
        before = try written(c, "xrf/spectrum")
        try s.harness.control("replug amptek1")
        try c.waitForDevice("xrf", "replugged") { $0.state == "connected" }
        try c.waitForStatus("spectra after replug") { ($0.streams.first { $0.name == "xrf/spectrum" }?.written ?? 0) > before + 5 }
        XCTAssertGreaterThanOrEqual(try c.json([DeviceInfo].self, ["devices"]).first { $0.name == "xrf" }?.reconnects ?? 0, 2)

        assertNothingLost(try c.json(RunStopResult.self, ["run", "stop"]))
        let disk = try RunOnDisk(directory: run.directory)
        XCTAssertEqual(disk.damaged, 0)
        disk.assertContiguous("xrf/spectrum")
        disk.assertContiguous("xrf/status")
        let spectra = disk.stream("xrf/spectrum")
        XCTAssertGreaterThan(spectra.count, 20)
        XCTAssertTrue(spectra.allSatisfy { $0.payload.count == 2048 * 4 }, "2048 u32 counts per frame")
        XCTAssertTrue(spectra.allSatisfy { $0.header.deviceTime != nil }, "every spectrum carries the detector's real time")
        let totals = spectra.map { r in r.payload.withUnsafeBytes { b in (0..<2048).reduce(0) { $0 + Int(b.loadUnaligned(fromByteOffset: 4 * $1, as: UInt32.self)) } } }
        XCTAssertGreaterThan(totals.filter { $0 > 0 }.count, spectra.count / 2, "spectra hold counts: \(totals.prefix(10))")

        let events = disk.events.filter { $0.source == "xrf" }
        let messages = events.map { "\($0.kind) \($0.message)" }
        XCTAssertTrue(events.contains { $0.kind == .stateChange && $0.message.contains("configuration read back") && $0.message.contains("MCAC=2048") }, "\(messages)")
        XCTAssertTrue(events.contains { $0.kind == .stateChange && $0.message.contains("acquisition started") }, "\(messages)")
        XCTAssertTrue(events.contains { $0.kind == .alarm && $0.message.contains("skipped") }, "the corrupted packet is reported: \(messages)")
        XCTAssertGreaterThanOrEqual(events.filter { $0.kind == .gap }.count, 2, "silence and unplug each leave a gap: \(messages)")
        XCTAssertTrue(
            events.contains {
                $0.kind == .stateChange && $0.message.contains("via /dev/bus/usb/") && $0.message.contains("bulk OUT 0x2, IN 0x81")
                    && $0.message.contains("Amptek DP5 serial DP5-1002")  // the strings, read with GET_DESCRIPTOR control transfers
            },
            "the connected event says how the device was opened: \(messages)")
        XCTAssertTrue(
            events.contains { $0.kind == .stateChange && $0.message.hasPrefix("disconnected") && ($0.message.contains("LIBUSB_TRANSFER_NO_DEVICE") || $0.message.contains("unplugged")) },
            "the unplug is recorded as a disconnect that says why: \(messages)")
    }
}
