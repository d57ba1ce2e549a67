import Foundation
import OperandoControl
import OperandoCore
import OperandoIO
import OperandoStore
import OperandoTestSupport
import OperandoTimeline
import XCTest

/// The AFM controller through the whole daemon: the Nanonis simulator served by operando-sim over
/// a real TCP socket, scan lines and frames recorded while a simulated potentiostat cycles, bias
/// and scan commands as stimuli, and the controller's connection dropped mid-scan.
final class NanonisDaemonTests: XCTestCase {
    static let pixels = 32, lines = 16, channels = 3

    static func config(port: UInt16) -> String {
        """
        [daemon]
        memory_budget_mb = 64
        ring_mb = 4
        sync_interval_ms = 100
        reconnect_max_s = 1

        [[device]]
        name = "pstat"
        driver = "demo-potentiostat"
        transport = "simulated"
        [device.settings]
        rate_hz = 100

        [[device]]
        name = "afm"
        driver = "nanonis-spm"
        transport = "tcp:127.0.0.1:\(port)"
        [device.settings]
        pixels = \(pixels)
        lines = \(lines)
        frame_size_nm = 2000
        speed_nm_per_s = 40000
        signals_hz = 20
        """
    }

    private func written(_ d: DaemonProcess, _ stream: String) throws -> UInt64 {
        try d.json(StatusResult.self, ["status"]).streams.first { $0.name == stream }?.written ?? 0
    }

    func testAFMOverTCP_recordsLinesAndFramesWhileThePotentiostatCycles_andSurvivesADroppedConnection() throws {
        var (sim, port) = try startSimulator("nanonis", port: 0)
        defer { if sim.isRunning { sim.terminate(); sim.waitUntilExit() } }
        let d = try DaemonProcess(config: Self.config(port: port))
        try d.waitForStatus("devices connected") { $0.devicesConnected == 2 }
        let afm = try XCTUnwrap(try d.json([DeviceInfo].self, ["devices"]).first { $0.name == "afm" })
        XCTAssertEqual(afm.transport, "tcp:127.0.0.1:\(port)")
        XCTAssertEqual(afm.model, "Nanonis SPM controller")
        XCTAssertEqual(afm.clock?.model, "host-stamped")

        let run = try d.json(RunInfo.self, ["run", "start", "afm"])
        try d.waitForStatus("a whole frame") { ($0.streams.first { $0.name == "afm/frame" }?.written ?? 0) >= 1 }
        let bias = try d.json(DeviceCommandResult.self, ["bias", "afm", "0.25"])
        XCTAssertEqual(bias.values["read_v"]?.numberValue ?? 0, 0.25, accuracy: 1e-6)
        let tip = try d.json(DeviceCommandResult.self, ["tip", "afm", "--x-nm", "150", "--y-nm=-20"])
        XCTAssertEqual(tip.values["x_nm"]?.numberValue ?? 0, 150, accuracy: 1e-6)
        XCTAssertEqual(try d.ctl(["scan", "afm", "pause"]).status, 0)
        XCTAssertEqual(try d.ctl(["scan", "afm", "resume"]).status, 0)
        let bad = try d.ctl(["scan", "afm", "sideways"])
        XCTAssertNotEqual(bad.status, 0)

        // The controller goes away mid-scan, and comes back on the same port.
        let before = try written(d, "afm/line")
        sim.terminate()
        sim.waitUntilExit()
        try d.client.waitForDevice("afm", "disconnected") { $0.state == "disconnected" }
        (sim, port) = try startSimulator("nanonis", port: port)
        try d.waitForStatus("lines again after the reconnect") { s in
            s.devicesConnected == 2 && (s.streams.first { $0.name == "afm/line" }?.written ?? 0) > before + 20
        }
        let stop = try d.json(RunStopResult.self, ["run", "stop"])
        XCTAssertTrue(stop.streams.allSatisfy { $0.dropped == 0 && $0.written == $0.produced }, "\(stop.streams)")

        let disk = try RunOnDisk(directory: run.directory)
        XCTAssertEqual(disk.damaged, 0)
        disk.assertContiguous("afm/line")
        // Each line record: a header row and forward + backward rows per channel, f32.
        let lines = disk.stream("afm/line")
        XCTAssertTrue(lines.allSatisfy { $0.payload.count == (1 + 2 * Self.channels) * Self.pixels * 4 })
        XCTAssertTrue(disk.stream("afm/frame").allSatisfy { $0.payload.count == Self.channels * 2 * Self.lines * Self.pixels * 4 })
        XCTAssertGreaterThan(disk.stream("afm/signals").count, 10)
        let events = disk.events.filter { $0.source == "afm" }
        let biasEvent = try XCTUnwrap(events.first { $0.kind == .stimulus && $0.values["command"] == .string("bias") }, "\(events.map(\.message))")
        XCTAssertNotNil(biasEvent.uncertaintyNs)
        XCTAssertTrue(events.contains { $0.kind == .gap }, "the dropped connection left a gap")
        XCTAssertTrue(events.filter { $0.kind == .stimulus && $0.values["command"] == .string("scan") }.count >= 2)
        XCTAssertTrue(events.contains { $0.kind == .stimulus && $0.values["command"] == .string("tip") })

        // Every line is tied to the potentiostat's state while it was scanned.
        let table = try d.json(AlignmentTable.self, ["align", "afm", "--response", "afm/line", "--stimulus", "pstat"])
        XCTAssertEqual(table.rows.count, lines.count)
        XCTAssertGreaterThan(table.rows.filter { $0.samples > 0 }.count, lines.count / 2)
        XCTAssertTrue(table.rows.allSatisfy { $0.uncertaintyNs != nil }, "host stamps of the controller carry its round-trip spread")

        // And the run exports to NeXus that h5py reads.
        let file = d.directory + "/afm.nxs"
        let exported = try d.ctl(["export", "afm", "--output", file])
        XCTAssertEqual(exported.status, 0, exported.err)
        let summary = try RecordingSafetyTests.checkNeXus(file)
        let frames = ((summary["nxdata"] as? [String: Any])?["/entry/afm_frame"] as? [String: Any])?["rows"] as? Int
        XCTAssertEqual(frames, disk.stream("afm/frame").count)
        XCTAssertEqual(d.terminate(), 0)
    }
}
