import Foundation
import OperandoControl
import OperandoCore
import OperandoIO
import OperandoStore
import OperandoTestSupport
import OperandoTimeline
import XCTest

/// The whole daemon with simulated instruments whose clocks drift by known amounts: what it
/// records and what `operandoctl refit` and `align` make of it must agree with the truth
/// within the uncertainty they state.
final class TimelineTests: XCTestCase {
    // Simulated device clocks: device_ns = offset + host_ns · (1 + ppm · 1e-6).
    static let pstat = (offsetNs: 5_000_000_000_000.0, ppm: 100.0)
    static let xrf = (offsetNs: 1_000_000_000_000.0, ppm: -80.0)

    static func truth(_ c: (offsetNs: Double, ppm: Double), device: Int64) -> Double { (Double(device) - c.offsetNs) / (1 + c.ppm * 1e-6) }

    static let config = """
        [daemon]
        memory_budget_mb = 64
        ring_mb = 4
        sync_interval_ms = 100

        [[device]]
        name = "pstat"
        driver = "demo-potentiostat"
        transport = "simulated"
        sim_clock_drift_ppm = 100
        sim_clock_offset_s = 5000
        [device.settings]
        rate_hz = 200
        clock_query_ms = 500

        [[device]]
        name = "xrf"
        driver = "demo-xrf"
        transport = "simulated"
        sim_clock_drift_ppm = -80
        sim_clock_offset_s = 1000
        [device.settings]
        channels = 256
        interval_ms = 100

        [[device]]
        name = "stage"
        driver = "zaber-ascii"
        transport = "simulated"
        [device.settings]
        poll_hz = 20
        """

    func testDriftingDeviceClocks_alignmentAndRefitStayWithinTheirStatedUncertainty() throws {
        let d = try DaemonProcess(config: Self.config)
        try d.waitForStatus("devices connected") { $0.devicesConnected == 3 }
        let run = try d.json(RunInfo.self, ["run", "start", "drift"])
        try d.waitForStatus("12 s of spectra") { ($0.streams.first { $0.name == "xrf/spectrum" }?.written ?? 0) >= 120 }
        XCTAssertEqual(try d.ctl(["move", "stage", "--unit", "um", "250"]).status, 0)
        let gpio = try d.ctl(["trigger", "pstat", "--line", "gpio2", "--pulse-ms", "50"])
        XCTAssertEqual(gpio.status, 0, gpio.err)

        // Live: every device has its clock model, and the drifts have the right sign and size.
        let devices = try d.json([DeviceInfo].self, ["devices"])
        let live = Dictionary(uniqueKeysWithValues: devices.map { ($0.name, $0.clock) })
        XCTAssertEqual(live["pstat"]??.model, "bracketed")
        XCTAssertEqual(live["xrf"]??.model, "one-way")
        XCTAssertEqual(live["stage"]??.model, "host-stamped")
        XCTAssertEqual(try XCTUnwrap(live["pstat"]??.driftPPM), 100, accuracy: 20)
        XCTAssertEqual(try XCTUnwrap(live["xrf"]??.driftPPM), -80, accuracy: 20)
        XCTAssertNotNil(live["stage"]??.uncertaintyNs)
        let stop = try d.json(RunStopResult.self, ["run", "stop"])
        XCTAssertTrue(stop.streams.allSatisfy { $0.dropped == 0 })

        // Refit through the daemon: the drifts are recovered and clock.json is written.
        let refit = try d.json(RefitResult.self, ["refit", "drift"])
        XCTAssertEqual(refit.file, run.directory + "/clock.json")
        let fits = Dictionary(uniqueKeysWithValues: refit.devices.map { ($0.device, $0) })
        XCTAssertEqual(fits["pstat"]?.model, "bracketed")
        XCTAssertEqual(fits["xrf"]?.model, "one-way")
        XCTAssertEqual(fits["stage"]?.model, "host-stamped")
        // Over 12 s, a drift is known to about (bracket or delay spread) / span: ~100 µs / 12 s ≈
        // 8 ppm for the potentiostat's brackets. What matters, the mapped times, is checked below
        // against each timestamp's own stated uncertainty.
        XCTAssertEqual(try XCTUnwrap(fits["pstat"]?.driftPPM), 100, accuracy: 15)
        XCTAssertEqual(try XCTUnwrap(fits["xrf"]?.driftPPM), -80, accuracy: 15)

        // Every potentiostat sample on disk maps to its true instant within the stated uncertainty.
        let reader = try RunReader(directory: run.directory)
        let clocks = try RunClocks.fit(reader)
        let pstatClock = try XCTUnwrap(clocks.device("pstat"))
        let ei = try XCTUnwrap(reader.stream(named: "pstat/ei"))
        var checked = 0
        try reader.records(streams: [ei.id]) { r in
            let device = try XCTUnwrap(r.header.deviceTime)
            let m = pstatClock.map(deviceTime: device, hostTime: r.header.hostTime)
            let u = try XCTUnwrap(m.uncertaintyNs)
            let error = Double(m.host.nanoseconds) - Self.truth(Self.pstat, device: device)
            XCTAssertLessThanOrEqual(abs(error), Double(u), "sample \(r.header.sequence): \(error) ns off, stated ±\(u) ns")
            checked += 1
        }
        XCTAssertGreaterThan(checked, 1000)

        // Alignment through the daemon: each spectrum's start is where the detector's clock says,
        // within the row's uncertainty, and it sees the potentiostat's samples of its interval.
        let table = try d.json(AlignmentTable.self, ["align", "drift", "--response", "xrf/spectrum", "--stimulus", "pstat"])
        XCTAssertEqual(table.responseClock, "one-way")
        XCTAssertEqual(table.stimulusClock, "bracketed")
        XCTAssertGreaterThanOrEqual(table.rows.count, 120)
        for row in table.rows {
            let u = try XCTUnwrap(row.uncertaintyNs, "spectrum \(row.sequence) has no uncertainty")
            let device = try XCTUnwrap(row.deviceTimeNs)
            let error = Double(row.startNs) - Self.truth(Self.xrf, device: device)
            XCTAssertLessThanOrEqual(abs(error), Double(u), "spectrum \(row.sequence): start \(error) ns off, stated ±\(u) ns")
            XCTAssertLessThan(u, 1_000_000, "spectrum \(row.sequence): uncertainty \(u) ns")
            // (The first spectrum began before the run, when no samples were being recorded yet.)
            if row.sequence != table.rows[0].sequence {
                XCTAssertTrue((15...25).contains(row.samples), "spectrum \(row.sequence): \(row.samples) potentiostat samples in 100 ms at 200 Hz")
            }
            let e = try XCTUnwrap(row.fields[0].mean)
            XCTAssertTrue((2.9...4.3).contains(e), "E \(e)")
        }

        // The same table from the run directory, without the daemon, as CSV.
        let csv = try d.ctl(["align", run.directory, "--response", "xrf/spectrum", "--stimulus", "pstat", "--csv"])
        XCTAssertEqual(csv.status, 0, csv.err)
        let lines = csv.out.split(separator: "\n")
        XCTAssertEqual(lines.count, table.rows.count + 1)
        XCTAssertTrue(lines[0].hasPrefix("sequence,device_time_ns,start_s,end_s,uncertainty_us,samples,E_mean [V]"), String(lines[0]))

        // The move was stamped by the host with the bracket of its request as uncertainty.
        let disk = try RunOnDisk(directory: run.directory)
        let move = try XCTUnwrap(disk.events.first { $0.kind == .stimulus && $0.source == "stage" })
        XCTAssertNotNil(move.uncertaintyNs)
        XCTAssertFalse(disk.stream("stage/clock").isEmpty, "the stage's round trips are stored")
        // The GPIO edges carry the potentiostat's clock, mapped live onto the host timeline.
        let edges = disk.events.filter { $0.source == "pstat" && $0.values["command"] == .string("trigger") }
        XCTAssertEqual(edges.map(\.message), ["trigger: GPIO2 high", "trigger: GPIO2 low"])
        for edge in edges {
            let u = try XCTUnwrap(edge.uncertaintyNs, edge.message)
            let error = Double(edge.hostTime.nanoseconds) - Self.truth(Self.pstat, device: try XCTUnwrap(edge.deviceTime))
            XCTAssertLessThanOrEqual(abs(error), Double(u), "\(edge.message): \(error) ns off, stated ±\(u) ns")
        }
        for edge in edges {
            let row = try XCTUnwrap(table.rows.first { $0.startNs <= edge.hostTime.nanoseconds && edge.hostTime.nanoseconds < $0.endNs }, "no spectrum holds \(edge.message)")
            XCTAssertGreaterThanOrEqual(row.stimulusEvents, 1, "spectrum \(row.sequence) holds \(edge.message)")
        }

        // Bad requests are refused with what to do.
        let trigger = try d.ctl(["trigger", "pstat"])
        XCTAssertNotEqual(trigger.status, 0)
        XCTAssertTrue(trigger.err.contains("not on a serial port"), trigger.err)
        let missing = try d.ctl(["align", "nope", "--response", "xrf/spectrum", "--stimulus", "pstat"])
        XCTAssertNotEqual(missing.status, 0)
        XCTAssertTrue(missing.err.contains("no run \"nope\""), missing.err)
        let wrong = try d.ctl(["align", "drift", "--response", "xrf/nothing", "--stimulus", "pstat"])
        XCTAssertTrue(wrong.err.contains("xrf/spectrum"), wrong.err)
        XCTAssertEqual(d.terminate(), 0)
    }
}
