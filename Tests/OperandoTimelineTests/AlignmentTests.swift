import Foundation
import OperandoCore
import OperandoIO
import OperandoStore
import OperandoSync
import XCTest

@testable import OperandoTimeline

/// A synthetic run with known truth: a potentiostat whose clock runs 100 ppm fast (bracketed
/// queries every second) ramps E linearly and steps I at 30 s; a detector whose clock runs
/// 80 ppm slow (one-way stamps) takes a spectrum every 500 ms. Every figure of the alignment
/// can be computed exactly from the truth.
final class AlignmentTests: XCTestCase {
    static let h0: Int64 = 1_000_000_000_000  // host time of the run's start, ns
    static let runSeconds: Int64 = 60
    static let stepAt: Int64 = h0 + 30_000_000_000
    static let pClock = (offset: Int64(5_000_000_000_000), ppm: 100.0)
    static let xClock = (offset: Int64(2_000_000_000_000), ppm: -80.0)

    static func device(_ c: (offset: Int64, ppm: Double), _ host: Int64) -> Int64 { c.offset + host + Int64((Double(host) * c.ppm * 1e-6).rounded(.down)) }
    static func voltage(_ host: Int64) -> Double { 3.0 + Double(host - h0) / 60e9 }
    static func current(_ host: Int64) -> Double { host < stepAt ? 1e-3 : -1e-3 }

    var directory = ""

    override func setUp() {
        directory = NSTemporaryDirectory() + "operando-align-\(UUID().uuidString)"
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: directory) }

    /// Writes the run; returns the truth of every spectrum: (sequence, start, end) host ns.
    @discardableResult
    func writeRun(stimulusClock: Bool = true) throws -> [(UInt64, Int64, Int64)] {
        let anchor = RealtimeAnchor(before: HostInstant(nanoseconds: Self.h0 - 10), after: HostInstant(nanoseconds: Self.h0 + 10), utcNanoseconds: 1_800_000_000_000_000_000, taiOffsetSeconds: 37)
        let run = try SyntheticRun(
            directory: directory,
            streams: [
                StreamDescriptor(id: 0, name: "p/ei", device: "p", kind: .samples, elementType: .float64, fields: [Field("E", unit: "V"), Field("I", unit: "A")], shape: [2], nominalRateHz: 100, maxPayloadBytes: 16),
                .events(device: "p"), .clock(device: "p"),
                StreamDescriptor(id: 3, name: "x/spectrum", device: "x", kind: .frames, elementType: .uint32, fields: [Field("counts", unit: "counts")], shape: [4], nominalRateHz: 2, maxPayloadBytes: 16),
                .clock(device: "x"),
            ],
            devices: [
                DeviceProvenance(name: "p", driver: "t", driverVersion: "1", transport: "t", identity: nil, clockResolutionNs: 1000),
                DeviceProvenance(name: "x", driver: "t", driverVersion: "1", transport: "t", identity: nil, clockResolutionNs: 1, oneWayLatencyMaxNs: 200_000),
            ],
            anchor: anchor)
        func put(_ stream: Int, kind: RecordKind = .data, host: Int64, device: Int64?, _ payload: [UInt8]) throws {
            try run.put(stream, kind: kind, host: host, device: device, payload)
        }
        func bytes<T>(_ values: [T]) -> [UInt8] { SyntheticRun.bytes(values) }
        var random = SeededRandom(seed: 42)
        /// Transport delay: 20 µs plus an exponential tail of mean 200 µs, and a 5 ms stall now and then.
        func delay() -> Int64 { 20_000 + Int64(-log(random.uniform()) * 200_000) + (random.uniform() < 0.02 ? 5_000_000 : 0) }

        var truth: [(UInt64, Int64, Int64)] = []
        var nextSpectrum = Self.h0 + 250_000_000
        var spectrumStart = Self.h0
        var nextQuery = Self.h0
        var stepRecorded = false
        for k in 0..<(Self.runSeconds * 100) {
            let t = Self.h0 + k * 10_000_000
            // The potentiostat: a sample every 10 ms, its device time exact, arriving late.
            try put(0, host: t + delay(), device: stimulusClock ? Self.device(Self.pClock, t) : nil, bytes([Self.voltage(t), Self.current(t)]))
            if !stepRecorded && t >= Self.stepAt {
                stepRecorded = true
                let event = Event(kind: .stimulus, source: "p", hostTime: HostInstant(nanoseconds: t + delay()), deviceTime: Self.device(Self.pClock, Self.stepAt), message: "current step to -1 mA")
                try put(1, kind: .event, host: event.hostTime.nanoseconds, device: event.deviceTime, Array(try JSONEncoder().encode(event)))
            }
            if stimulusClock && t >= nextQuery {
                nextQuery += 1_000_000_000
                // A bracketed query: the device read its clock at t, inside [t − a, t + b].
                let before = t - 30_000 - Int64(random.uniform() * 150_000)
                let after = t + 30_000 + Int64(random.uniform() * 150_000)
                let o = ClockObservation(kind: .bracketed, hostBefore: HostInstant(nanoseconds: before), hostAfter: HostInstant(nanoseconds: after), deviceTime: Self.device(Self.pClock, t))
                try o.withPayload { try put(2, host: after, device: o.deviceTime, Array($0)) }
            }
            // The detector: a spectrum ends at every 500 ms; stamped with its start, sent at its end.
            if t >= nextSpectrum {
                let end = nextSpectrum
                let arrival = end + delay()
                truth.append((run.sequences[3], spectrumStart, end))
                try put(3, host: arrival, device: Self.device(Self.xClock, spectrumStart), bytes([UInt32(1), 2, 3, 4]))
                let o = ClockObservation(kind: .oneWay, hostBefore: HostInstant(nanoseconds: arrival), hostAfter: HostInstant(nanoseconds: arrival), deviceTime: Self.device(Self.xClock, end))
                try o.withPayload { try put(4, host: arrival, device: o.deviceTime, Array($0)) }
                spectrumStart = end
                nextSpectrum += 500_000_000
            }
        }
        try run.sync()
        return truth
    }

    func testRefitRecoversBothClocks() throws {
        try writeRun()
        let clocks = try RunClocks.fit(RunReader(directory: directory))
        let p = try XCTUnwrap(clocks.device("p"))
        let x = try XCTUnwrap(clocks.device("x"))
        XCTAssertEqual(p.model, .bracketed)
        XCTAssertEqual(x.model, .oneWay)
        XCTAssertEqual(p.observations, 60)
        XCTAssertEqual(p.segments.count, 1, "a steady clock is one segment")
        XCTAssertEqual(try XCTUnwrap(p.driftPPM), 100, accuracy: 1, "the potentiostat's clock runs 100 ppm fast")
        XCTAssertEqual(try XCTUnwrap(x.driftPPM), -80, accuracy: 2, "the detector's clock runs 80 ppm slow")
        // Every stored device time maps back to its truth within the stated uncertainty.
        for k in stride(from: Int64(0), to: 6000, by: 37) {
            let t = Self.h0 + k * 10_000_000
            let m = p.map(deviceTime: Self.device(Self.pClock, t), hostTime: HostInstant(nanoseconds: t))
            let u = try XCTUnwrap(m.uncertaintyNs)
            XCTAssertLessThanOrEqual(abs(m.host.nanoseconds - t), u, "potentiostat sample at \(k): error beyond ±\(u) ns")
            XCTAssertLessThan(u, 200_000, "bracketed uncertainty stays below the worst half round trip")
        }
        // The refit is written where tools find it, and reads back the same.
        let path = try clocks.write(into: directory)
        let back = try JSONDecoder().decode(RunClocks.self, from: Data(contentsOf: URL(fileURLWithPath: path)))
        XCTAssertEqual(back.devices.map(\.segments), clocks.devices.map(\.segments))
        XCTAssertEqual(clocks.summary.map(\.model), ["bracketed", "one-way"])
    }

    func testEveryResponseGetsTheStimulusAppliedDuringIt() throws {
        let truth = try writeRun()
        let table = try Alignment.compute(RunReader(directory: directory), response: "x/spectrum", stimulus: "p")
        XCTAssertEqual(table.responseClock, "one-way")
        XCTAssertEqual(table.stimulusClock, "bracketed")
        XCTAssertEqual(table.rows.count, truth.count)
        XCTAssertEqual(table.stimulusFields.map(\.name), ["E", "I"])
        var stepRows = 0
        for (row, (sequence, start, end)) in zip(table.rows, truth) {
            XCTAssertEqual(row.sequence, sequence)
            let u = try XCTUnwrap(row.uncertaintyNs, "both devices have clocks: the uncertainty is known")
            XCTAssertLessThanOrEqual(abs(row.startNs - start), u, "spectrum \(sequence) starts \(row.startNs - start) ns from the truth, stated ±\(u)")
            if sequence + 1 < truth.count {
                XCTAssertLessThanOrEqual(abs(row.endNs - end), u, "spectrum \(sequence) ends \(row.endNs - end) ns from the truth")
            }
            // A sample every 10 ms: 50 in a 500 ms spectrum (±1 at the edges); the first is 250 ms.
            let expectedSamples = Int((end - start) / 10_000_000)
            XCTAssertLessThanOrEqual(abs(row.samples - expectedSamples), 1, "spectrum \(sequence) has \(row.samples) samples, expected \(expectedSamples)")
            // E ramps linearly: its mean is its value mid-interval, its range the interval's ends.
            let e = row.fields[0]
            XCTAssertEqual(try XCTUnwrap(e.mean), Self.voltage((start + end) / 2), accuracy: 2e-4)
            XCTAssertEqual(try XCTUnwrap(e.min), Self.voltage(start), accuracy: 3e-4)
            XCTAssertEqual(try XCTUnwrap(e.max), Self.voltage(end), accuracy: 3e-4)
            // Charge: ±1 mA held, stepping at 30 s.
            let expected = Double(max(0, min(end, Self.stepAt) - start)) * 1e-3 / 1e9 - Double(max(0, end - max(start, Self.stepAt))) * 1e-3 / 1e9
            XCTAssertEqual(try XCTUnwrap(row.chargeC), expected, accuracy: 2.5e-5, "spectrum \(sequence): charge")
            if start <= Self.stepAt && Self.stepAt < end {
                stepRows += 1
                XCTAssertEqual(row.stimulusEvents, 1, "the step falls in this spectrum")
                XCTAssertEqual(row.fields[1].min, -1e-3)
                XCTAssertEqual(row.fields[1].max, 1e-3)
            } else {
                XCTAssertEqual(row.stimulusEvents, 0)
            }
            XCTAssertEqual(row.lastStimulus, end > Self.stepAt ? "current step to -1 mA" : nil)
        }
        XCTAssertEqual(stepRows, 1)

        // The CSV carries the same columns, with units, one line per response.
        let csv = table.csv().split(separator: "\n")
        XCTAssertEqual(csv.count, truth.count + 1)
        XCTAssertEqual(
            String(csv[0]),
            "sequence,device_time_ns,start_s,end_s,uncertainty_us,samples,E_mean [V],E_min [V],E_max [V],I_mean [A],I_min [A],I_max [A],charge [C],stimulus_events,last_stimulus")
        XCTAssertEqual(csv[1].split(separator: ",", omittingEmptySubsequences: false).count, 15)
    }

    func testHostStampedStimulusHasNoInventedUncertainty() throws {
        try writeRun(stimulusClock: false)
        let table = try Alignment.compute(RunReader(directory: directory), response: "x/spectrum", stimulus: "p")
        XCTAssertEqual(table.stimulusClock, "none")
        XCTAssertTrue(table.rows.allSatisfy { $0.uncertaintyNs == nil }, "host stamps of a device that never answered a request have no measured uncertainty")
    }

    func testUnknownStreamsAndDevicesAreNamed() throws {
        try writeRun()
        let reader = try RunReader(directory: directory)
        XCTAssertThrowsError(try Alignment.compute(reader, response: "x/nope", stimulus: "p")) { error in
            XCTAssertTrue("\(error)".contains("no data stream \"x/nope\"") && "\(error)".contains("x/spectrum"), "\(error)")
        }
        XCTAssertThrowsError(try Alignment.compute(reader, response: "x/spectrum", stimulus: "q")) { error in
            XCTAssertTrue("\(error)".contains("\"q\"") && "\(error)".contains("p"), "\(error)")
        }
        XCTAssertThrowsError(try RunReader(directory: directory + "/nothing")) { error in
            XCTAssertTrue("\(error)".contains("not a run directory"), "\(error)")
        }
    }
}
