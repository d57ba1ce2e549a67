import Foundation
import OperandoCore
import OperandoIO
import OperandoStore
import OperandoSync
import XCTest

@testable import OperandoTimeline

/// Exports of a synthetic run with known truth, to NeXus/HDF5 and CSV, checked by independent
/// readers: h5dump, h5py (`Tests/Support/check-nexus.py`), nexusformat and silx
/// (`scripts/nexus-check.sh`), and a CSV parser here.
///
/// The run (30 s): a potentiostat at 100 Hz (E, I, cycle; two rows per record) whose clock runs
/// 100 ppm fast, with bracketed clock queries every second and a current step at 15 s (a
/// stimulus event with its device time); an X-ray detector taking a spectrum of 8 u32 channels
/// every 250 ms, its clock 80 ppm slow, one-way stamps; a stage polled at 10 Hz (position and
/// encoder in µm) with no clock, host stamps and round trips; a move, a marker, a gap and a state
/// change. The run continues in a second segment at 15 s.
final class ExportTests: XCTestCase {
    static let h0: Int64 = 1_000_000_000_000
    static let runSeconds: Int64 = 30
    static let stepAt: Int64 = h0 + 15_000_000_000
    static let pClock = (offset: Int64(5_000_000_000_000), ppm: 100.0)
    static let xClock = (offset: Int64(2_000_000_000_000), ppm: -80.0)
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
    static let metadataJSON = #"""
        {"operator": "ada", "sample id": "S-17", "regime": "operando",
         "cell": {"format": "CR2032 coin cell", "active_mass_mg": 12.5, "working_electrode": "NMC811:C65:PVDF 90:5:5 on Al"},
         "electrolyte": {"salt": "LiPF6", "concentration_mol_per_l": 1, "solvents": ["EC", "DMC"]}}
        """#
    static let moveMessage = #"move abs 2500 µm, "fast""#

    static func device(_ c: (offset: Int64, ppm: Double), _ host: Int64) -> Int64 { c.offset + host + Int64((Double(host) * c.ppm * 1e-6).rounded(.down)) }
    static func values(_ t: Int64) -> [Double] { [3.0 + Double(t - h0) / 60e9, t < stepAt ? 1e-3 : -1e-3, Double(t - h0) / 1e10] }

    /// What the run holds, from the writer's side.
    struct Truth {
        /// Per potentiostat row: its true time and values; per record: (first row, device time).
        var pstat: [(t: Int64, values: [Double])] = []
        var pstatRecords: [(firstRow: Int, device: Int64)] = []
        var spectra: [(start: Int64, arrival: Int64, counts: [UInt32])] = []
        var stage: [(arrival: Int64, values: [Double])] = []
        var events: [(t: Int64, kind: String, message: String)] = []
    }

    var directory = ""
    var runDirectory: String { directory + "/run" }

    override func setUp() {
        directory = NSTemporaryDirectory() + "operando-export-\(UUID().uuidString)"
        try? FileSystem.makeDirectories(directory)
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: directory) }

    // MARK: The synthetic run

    @discardableResult
    func writeRun() throws -> (truth: Truth, run: SyntheticRun) {
        let anchor = RealtimeAnchor(
            before: HostInstant(nanoseconds: Self.h0 - 10), after: HostInstant(nanoseconds: Self.h0 + 10), utcNanoseconds: 1_800_000_000_000_000_000,
            taiOffsetSeconds: 37)
        let stop = RealtimeAnchor(
            before: HostInstant(nanoseconds: Self.h0 + Self.runSeconds * 1_000_000_000),
            after: HostInstant(nanoseconds: Self.h0 + Self.runSeconds * 1_000_000_000 + 20),
            utcNanoseconds: 1_800_000_000_000_000_000 + Self.runSeconds * 1_000_000_000, taiOffsetSeconds: 37)
        let run = try SyntheticRun(
            directory: runDirectory,
            streams: [
                StreamDescriptor(
                    name: "pstat/ei", device: "pstat", kind: .samples, elementType: .float64,
                    fields: [Field("E", unit: "V"), Field("I", unit: "A"), Field("cycle", unit: "1")], shape: [3], nominalRateHz: 100, maxPayloadBytes: 48),
                .events(device: "pstat"), .clock(device: "pstat"),
                StreamDescriptor(
                    name: "xrf/spectrum", device: "xrf", kind: .frames, elementType: .uint32, fields: [Field("counts", unit: "counts")], shape: [8],
                    nominalRateHz: 4, maxPayloadBytes: 32),
                .events(device: "xrf"), .clock(device: "xrf"),
                StreamDescriptor(
                    name: "stage/position", device: "stage", kind: .samples, elementType: .float64,
                    fields: [Field("pos1", unit: "µm"), Field("encoder1", unit: "um")], shape: [2], nominalRateHz: 10, maxPayloadBytes: 16),
                .events(device: "stage"), .clock(device: "stage"),
                .events(device: "daemon"),
            ],
            devices: [
                DeviceProvenance(
                    name: "pstat", driver: "demo-potentiostat", driverVersion: "1.2", transport: "simulated",
                    identity: DeviceIdentity(model: "DEMO-PSTAT", serialNumber: "P-0001", firmware: "1.0", protocolVersion: "1"), clockResolutionNs: 1000),
                DeviceProvenance(
                    name: "xrf", driver: "demo-xrf", driverVersion: "1.0", transport: "simulated", identity: nil, clockResolutionNs: 1,
                    oneWayLatencyMaxNs: 200_000),
                DeviceProvenance(
                    name: "stage", driver: "zaber-ascii", driverVersion: "2.0", transport: "serial:/dev/ttyUSB0",
                    identity: DeviceIdentity(model: "X-LSM050A", serialNumber: "12345", firmware: "7.38", protocolVersion: "ascii")),
            ],
            anchor: anchor, metadataJSON: Self.metadataJSON, stopAnchor: stop, configText: "[daemon]\nlog_level = \"info\"\n")
        var truth = Truth()
        var random = SeededRandom(seed: 2024)
        func delay() -> Int64 { 20_000 + Int64(-log(random.uniform()) * 200_000) }
        var spectrumStart = Self.h0
        var nextSpectrum = Self.h0 + 250_000_000
        for k in stride(from: Int64(0), to: Self.runSeconds * 100, by: 2) {
            let t = Self.h0 + k * 10_000_000
            if t == Self.stepAt { try run.newSegment() }
            // Potentiostat: rows k and k+1 in one record, stamped with row k's device time.
            let rows = [t, t + 10_000_000]
            let device = Self.device(Self.pClock, t)
            truth.pstatRecords.append((truth.pstat.count, device))
            for r in rows { truth.pstat.append((r, Self.values(r))) }
            try run.put(0, host: rows[1] + delay(), device: device, SyntheticRun.bytes(rows.flatMap(Self.values)))
            if k % 100 == 0 {
                let before = t - 30_000 - Int64(random.uniform() * 150_000)
                let after = t + 30_000 + Int64(random.uniform() * 150_000)
                try run.put(
                    2,
                    clock: ClockObservation(
                        kind: .bracketed, hostBefore: HostInstant(nanoseconds: before), hostAfter: HostInstant(nanoseconds: after), deviceTime: device))
            }
            if t == Self.stepAt {
                let e = Event(
                    kind: .stimulus, source: "pstat", hostTime: HostInstant(nanoseconds: t + delay()), deviceTime: device, uncertaintyNs: 1_000_000,
                    message: "current step to -1 mA", values: ["current_a": .number(-1e-3)])
                try run.put(1, event: e)
                truth.events.append((t, "stimulus", e.message))
            }
            // Detector: a spectrum ends every 250 ms, stamped with its start, sent at its end.
            if t >= nextSpectrum {
                let arrival = nextSpectrum + delay()
                let n = UInt32(truth.spectra.count)
                let counts = (0..<UInt32(8)).map { n * 1000 + $0 * 3 + (n % 7) }
                truth.spectra.append((spectrumStart, arrival, counts))
                try run.put(3, host: arrival, device: Self.device(Self.xClock, spectrumStart), SyntheticRun.bytes(counts))
                try run.put(
                    5,
                    clock: ClockObservation(
                        kind: .oneWay, hostBefore: HostInstant(nanoseconds: arrival), hostAfter: HostInstant(nanoseconds: arrival),
                        deviceTime: Self.device(Self.xClock, nextSpectrum)))
                spectrumStart = nextSpectrum
                nextSpectrum += 250_000_000
            }
            // Stage: polled every 100 ms, stamped by the host when the reply arrives.
            if k % 10 == 0 {
                let sent = t
                let arrival = t + 2 * delay()
                let position = [2500.0 * Double(min(k, 1000)) / 1000, 2500.0 * Double(min(k, 1000)) / 1000 + 0.047625]
                truth.stage.append((arrival, position))
                try run.put(6, host: arrival, device: nil, SyntheticRun.bytes(position))
                try run.put(
                    8,
                    clock: ClockObservation(
                        kind: .roundTrip, hostBefore: HostInstant(nanoseconds: sent), hostAfter: HostInstant(nanoseconds: arrival), deviceTime: nil))
            }
            if k == 300 {
                let e = Event(
                    kind: .stimulus, source: "stage", hostTime: HostInstant(nanoseconds: t), uncertaintyNs: 50_000, message: Self.moveMessage,
                    values: ["target_um": .number(2500), "axis": .integer(1)])
                try run.put(7, event: e)
                truth.events.append((t, "stimulus", e.message))
            }
            if k == 500 {
                let e = Event(kind: .marker, source: "daemon", hostTime: HostInstant(nanoseconds: t), message: "sample in beam")
                try run.put(9, event: e)
                truth.events.append((t, "marker", e.message))
            }
            if k == 2000 {
                let e = Event(
                    kind: .gap, source: "stage", hostTime: HostInstant(nanoseconds: t), endTime: HostInstant(nanoseconds: t + 40_000_000),
                    message: "no reply for 40 ms\nretrying")
                try run.put(7, event: e)
                truth.events.append((t, "gap", e.message))
            }
            if k == 2500 {
                let e = Event(kind: .stateChange, source: "xrf", hostTime: HostInstant(nanoseconds: t), message: "detector temperature stable")
                try run.put(4, event: e)
                truth.events.append((t, "state_change", e.message))
            }
        }
        try run.sync()
        truth.events.sort { $0.t < $1.t }
        return (truth, run)
    }

    // MARK: NeXus

    func testNeXusExport_ofASyntheticRun_passesEveryReaderAndMatchesTheTruth() throws {
        let (truth, _) = try writeRun()
        let reader = try RunReader(directory: runDirectory)
        let path = directory + "/run.nxs"
        var fractions: [Double] = []
        let summary = try NeXusExport.write(reader, to: path) { fractions.append($0) }
        XCTAssertEqual(HDF5.openObjectCount, 0, "every HDF5 identifier is closed after the export")
        XCTAssertFalse(FileSystem.exists(path + ".partial"))
        XCTAssertEqual(summary.path, path)
        XCTAssertEqual(summary.bytes, ExportFiles.size(path))
        XCTAssertGreaterThan(summary.bytes, 0)
        XCTAssertEqual(summary.streams.map(\.name), ["pstat/ei", "xrf/spectrum", "stage/position"])
        XCTAssertEqual(summary.streams.map(\.rows), [truth.pstat.count, truth.spectra.count, truth.stage.count])
        XCTAssertEqual(summary.streams.map(\.records), [truth.pstatRecords.count, truth.spectra.count, truth.stage.count])
        XCTAssertEqual(summary.events, truth.events.count)
        XCTAssertEqual(summary.damagedRegions, 0)
        XCTAssertEqual(summary.tornTailBytes, 0)
        XCTAssertEqual(summary.malformedRecords, 0)
        XCTAssertEqual(fractions.last, 1)
        XCTAssertEqual(fractions, fractions.sorted(), "progress never goes back")

        // (a) h5dump reads the whole structure.
        let dump = try Self.run("/usr/bin/h5dump", ["-H", path])
        XCTAssertEqual(dump.status, 0, dump.err)
        XCTAssertTrue(dump.out.contains("GROUP \"entry\""), dump.out)

        // (b) h5py, independently: NeXus rules, and the values.
        let dumped = [
            "/entry/pstat_ei/host_time_ns", "/entry/pstat_ei/time_uncertainty_ns", "/entry/pstat_ei/time", "/entry/pstat_ei/E",
            "/entry/pstat_ei/device_time_ns", "/entry/xrf_spectrum/host_time_ns", "/entry/xrf_spectrum/time_uncertainty_ns",
            "/entry/stage_position/host_time_ns", "/entry/stage_position/time_uncertainty_ns", "/entry/stage_position/device_time_ns",
        ]
        let check = try Self.run(
            "/usr/bin/python3", ["-W", "error", Self.repository + "/Tests/Support/check-nexus.py", path] + dumped.flatMap { ["--dump", $0] })
        XCTAssertEqual(check.status, 0, "check-nexus.py: \(check.err)")
        let report = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(check.out.utf8)) as? [String: Any], check.out)

        let attributes = try XCTUnwrap(report["attributes"] as? [String: Any])
        XCTAssertEqual(attributes["default"] as? String, "entry")
        XCTAssertEqual(attributes["creator"] as? String, "operandod")
        XCTAssertEqual(attributes["file_name"] as? String, path)
        XCTAssertEqual(attributes["HDF5_Version"] as? String, HDF5.libraryVersion)
        let entry = try XCTUnwrap(report["entry"] as? [String: String])
        XCTAssertEqual(entry["default"], "pstat_ei")
        XCTAssertEqual(entry["title"], "synthetic")
        XCTAssertEqual(entry["entry_identifier"], "run-id")
        XCTAssertEqual(entry["start_time"], reader.manifest.startedAt)
        XCTAssertEqual(entry["end_time"], reader.manifest.stoppedAt)
        XCTAssertEqual(entry["program_name"], "operandod")
        XCTAssertEqual(entry["program_version"], "test")
        XCTAssertEqual(entry["run_state"], "complete")
        XCTAssertEqual(entry["stop_reason"], "test finished")

        let groups = try XCTUnwrap(report["groups"] as? [String: String])
        let expectedClasses = [
            "/entry": "NXentry", "/entry/pstat_ei": "NXdata", "/entry/xrf_spectrum": "NXdata", "/entry/stage_position": "NXdata",
            "/entry/instrument": "NXinstrument", "/entry/instrument/pstat": "NXcollection", "/entry/instrument/pstat/clock": "NXcollection",
            "/entry/instrument/stage_pos1": "NXpositioner", "/entry/instrument/stage_encoder1": "NXpositioner", "/entry/events": "NXcollection",
            "/entry/clock": "NXcollection", "/entry/clock/pstat": "NXcollection", "/entry/metadata": "NXcollection", "/entry/provenance": "NXnote",
            "/entry/recording": "NXcollection",
        ]
        for (group, nxClass) in expectedClasses { XCTAssertEqual(groups[group], nxClass, group) }

        let nxdata = try XCTUnwrap(report["nxdata"] as? [String: [String: Any]])
        let pstat = try XCTUnwrap(nxdata["/entry/pstat_ei"])
        XCTAssertEqual(pstat["rows"] as? Int, truth.pstat.count)
        XCTAssertEqual(pstat["signal"] as? String, "E")
        XCTAssertEqual(pstat["axes"] as? [String], ["time"])
        XCTAssertEqual(pstat["auxiliary_signals"] as? [String], ["I", "cycle"])
        let pstatSets = try XCTUnwrap(pstat["datasets"] as? [String: [String: Any]])
        for (name, unit, column) in [("E", "V", 0), ("I", "A", 1), ("cycle", "1", 2)] {
            XCTAssertEqual(pstatSets[name]?["units"] as? String, unit)
            XCTAssertEqual(pstatSets[name]?["first"] as? Double, truth.pstat.first?.values[column])
            XCTAssertEqual(pstatSets[name]?["last"] as? Double, truth.pstat.last?.values[column])
            XCTAssertEqual(pstatSets[name]?["dtype"] as? String, "float64")
        }
        XCTAssertEqual(pstatSets["time"]?["units"] as? String, "s")
        XCTAssertEqual(pstatSets["sequence"]?["last"] as? Int, truth.pstatRecords.count - 1, "a row carries its record's sequence")
        let xrf = try XCTUnwrap(nxdata["/entry/xrf_spectrum"])
        XCTAssertEqual(xrf["rows"] as? Int, truth.spectra.count)
        XCTAssertEqual(xrf["signal"] as? String, "data")
        XCTAssertEqual(xrf["axes"] as? [String], ["time", "channel"])
        let xrfSets = try XCTUnwrap(xrf["datasets"] as? [String: [String: Any]])
        XCTAssertEqual(xrfSets["data"]?["shape"] as? [Int], [truth.spectra.count, 8])
        XCTAssertEqual(xrfSets["data"]?["dtype"] as? String, "uint32")
        XCTAssertEqual(xrfSets["data"]?["units"] as? String, "counts")
        XCTAssertEqual((xrfSets["data"]?["first"] as? [Int])?.map(UInt32.init), truth.spectra.first?.counts)
        XCTAssertEqual((xrfSets["data"]?["last"] as? [Int])?.map(UInt32.init), truth.spectra.last?.counts)
        XCTAssertEqual(xrfSets["channel"]?["shape"] as? [Int], [8])
        let stage = try XCTUnwrap(nxdata["/entry/stage_position"])
        XCTAssertEqual(stage["rows"] as? Int, truth.stage.count)
        let stageSets = try XCTUnwrap(stage["datasets"] as? [String: [String: Any]])
        XCTAssertEqual(stageSets["pos1"]?["units"] as? String, "µm")
        XCTAssertEqual(stageSets["pos1"]?["last"] as? Double, truth.stage.last?.values[0])
        XCTAssertEqual(stageSets["encoder1"]?["last"] as? Double, truth.stage.last?.values[1])

        let positioners = try XCTUnwrap(report["positioners"] as? [String: [String: Any]])
        XCTAssertEqual(positioners["/entry/instrument/stage_pos1"]?["value"] as? String, "/entry/stage_position/pos1")
        XCTAssertEqual(positioners["/entry/instrument/stage_pos1"]?["time"] as? String, "/entry/stage_position/time")
        XCTAssertEqual(positioners["/entry/instrument/stage_pos1"]?["rows"] as? Int, truth.stage.count)
        XCTAssertEqual(positioners.count, 2, "only the length fields get positioners")

        // Every time within its stated uncertainty of the truth.
        let dumps = try XCTUnwrap(report["dumps"] as? [String: [Any]])
        func ints(_ path: String) throws -> [Int64] { try XCTUnwrap(dumps[path] as? [Int], path).map(Int64.init) }
        let pHost = try ints("/entry/pstat_ei/host_time_ns")
        let pU = try ints("/entry/pstat_ei/time_uncertainty_ns")
        let pTime = try XCTUnwrap(dumps["/entry/pstat_ei/time"] as? [Double])
        let pDevice = try ints("/entry/pstat_ei/device_time_ns")
        XCTAssertEqual(pHost.count, truth.pstat.count)
        for (j, row) in truth.pstat.enumerated() {
            XCTAssertGreaterThan(pU[j], 0)
            XCTAssertLessThanOrEqual(abs(pHost[j] - row.t), pU[j], "potentiostat row \(j): \(pHost[j] - row.t) ns from the truth, stated ±\(pU[j])")
            XCTAssertEqual(pTime[j], Double(pHost[j] - Self.h0) / 1e9, accuracy: 1e-12)
        }
        for (k, record) in truth.pstatRecords.enumerated() {
            XCTAssertEqual(pDevice[record.firstRow], record.device, "record \(k): its device time")
            XCTAssertEqual(pDevice[record.firstRow + 1], record.device + 10_000_000, "record \(k): the second row one nominal period later")
        }
        let xHost = try ints("/entry/xrf_spectrum/host_time_ns")
        let xU = try ints("/entry/xrf_spectrum/time_uncertainty_ns")
        for (j, s) in truth.spectra.enumerated() {
            XCTAssertLessThanOrEqual(abs(xHost[j] - s.start), xU[j], "spectrum \(j): \(xHost[j] - s.start) ns from its true start, stated ±\(xU[j])")
        }
        let clocks = try RunClocks.fit(reader)
        let stageU = try XCTUnwrap(clocks.device("stage")?.hostStampUncertaintyNs)
        XCTAssertEqual(try ints("/entry/stage_position/host_time_ns"), truth.stage.map(\.arrival), "host stamps are kept as they are")
        XCTAssertEqual(try ints("/entry/stage_position/time_uncertainty_ns"), Array(repeating: stageU, count: truth.stage.count))
        XCTAssertEqual(try ints("/entry/stage_position/device_time_ns"), Array(repeating: Int64.min, count: truth.stage.count))

        // Events: all of them, sorted, the step placed through the refit within its uncertainty.
        let events = try XCTUnwrap(report["events"] as? [String: Any])
        let rows = try XCTUnwrap(events["rows"] as? [[String: Any]])
        XCTAssertEqual(rows.map { $0["message"] as? String }, truth.events.map(\.message))
        XCTAssertEqual(rows.map { $0["kind"] as? String }, truth.events.map(\.kind))
        let step = try XCTUnwrap(rows.first { $0["kind"] as? String == "stimulus" && $0["source"] as? String == "pstat" })
        let stepHost = try XCTUnwrap(step["host_time_ns"] as? Int)
        let stepU = try XCTUnwrap(step["time_uncertainty_ns"] as? Int)
        XCTAssertLessThan(stepU, 1_000_000, "the refit is tighter than the live model's ±1 ms")
        XCTAssertLessThanOrEqual(abs(Int64(stepHost) - Self.stepAt), Int64(stepU))
        XCTAssertEqual(step["values_json"] as? String, #"{"current_a":-0.001}"#)
        let marker = try XCTUnwrap(rows.first { $0["kind"] as? String == "marker" })
        XCTAssertEqual(marker["source"] as? String, "daemon")
        XCTAssertEqual(marker["time_uncertainty_ns"] as? Int, -1)
        XCTAssertEqual(marker["device_time_ns"] as? Int, Int(Int64.min))
        XCTAssertEqual(marker["time"] as? Double, 5.0)
        let gap = try XCTUnwrap(rows.first { $0["kind"] as? String == "gap" })
        XCTAssertEqual(gap["end_host_time_ns"] as? Int, Int(Self.h0 + 20_040_000_000))

        // Clock observations as stored, and the refit.
        let clock = try XCTUnwrap(report["clock"] as? [String: [String: Any]])
        XCTAssertEqual(clock["pstat"]?["observations"] as? Int, Int(Self.runSeconds))
        XCTAssertEqual(clock["pstat"]?["model"] as? String, "bracketed")
        XCTAssertEqual(clock["xrf"]?["observations"] as? Int, truth.spectra.count)
        XCTAssertEqual(clock["xrf"]?["model"] as? String, "one-way")
        XCTAssertEqual(clock["stage"]?["model"] as? String, "host-stamped")

        // Metadata: mirrored (objects as groups, numbers as float64, lists as 1-D datasets),
        // sanitized names keep their key, and the whole as JSON.
        let metadata = try XCTUnwrap(report["metadata"] as? [String: Any])
        XCTAssertEqual(metadata["operator"] as? String, "ada")
        XCTAssertEqual(metadata["sample_id"] as? String, "S-17")
        let cell = try XCTUnwrap(metadata["cell"] as? [String: Any])
        XCTAssertEqual(cell["format"] as? String, "CR2032 coin cell")
        XCTAssertEqual(cell["active_mass_mg"] as? Double, 12.5)
        let electrolyte = try XCTUnwrap(metadata["electrolyte"] as? [String: Any])
        XCTAssertEqual(electrolyte["solvents"] as? [String], ["EC", "DMC"])
        XCTAssertEqual(electrolyte["concentration_mol_per_l"] as? Double, 1)
        XCTAssertEqual(groups["/entry/metadata/cell"], "NXcollection")
        let metadataJSON = try XCTUnwrap(report["metadata_json"] as? NSDictionary)
        XCTAssertEqual(metadataJSON, try JSONSerialization.jsonObject(with: Data(Self.metadataJSON.utf8)) as? NSDictionary)
        let provenance = try XCTUnwrap(report["provenance"] as? [String: Any])
        XCTAssertEqual(provenance["configText"] as? String, "[daemon]\nlog_level = \"info\"\n")
        XCTAssertEqual((provenance["devices"] as? [[String: Any]])?.count, 3)

        // (c) nexusformat and silx, without a warning.
        if ProcessInfo.processInfo.environment["OPERANDO_SKIP_PEER_READERS"] == nil {
            let peers = try Self.run("/bin/bash", [Self.repository + "/scripts/nexus-check.sh", path])
            XCTAssertEqual(peers.status, 0, "nexus-check.sh:\n\(peers.out)\n\(peers.err)")
            XCTAssertTrue(peers.out.contains("passed"), peers.out)
            XCTAssertTrue(peers.out.contains("silx: /entry/xrf_spectrum: signal /entry/xrf_spectrum/data (\(truth.spectra.count), 8) uint32"), peers.out)
        }
    }

    func testNeXusExport_ofARunStillRecording_hasNoEndTime() throws {
        let anchor = RealtimeAnchor(
            before: HostInstant(nanoseconds: Self.h0), after: HostInstant(nanoseconds: Self.h0), utcNanoseconds: 1_800_000_000_000_000_000, taiOffsetSeconds: 0)
        let run = try SyntheticRun(
            directory: runDirectory,
            streams: [
                StreamDescriptor(
                    name: "cam/image", device: "cam", kind: .frames, elementType: .uint16, fields: [Field("intensity", unit: "counts")], shape: [3, 4],
                    nominalRateHz: 1, maxPayloadBytes: 24)
            ],
            devices: [], anchor: anchor, state: .recording)
        for k in 0..<3 { try run.put(0, host: Self.h0 + Int64(k) * 1_000_000_000, device: nil, SyntheticRun.bytes((0..<12).map { UInt16(k * 100 + $0) })) }
        try run.sync()
        let path = directory + "/recording.nxs"
        try NeXusExport.write(try RunReader(directory: runDirectory), to: path)
        let check = try Self.run(
            "/usr/bin/python3", ["-W", "error", Self.repository + "/Tests/Support/check-nexus.py", path, "--dump", "/entry/cam_image/time"])
        XCTAssertEqual(check.status, 0, check.err)
        let report = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(check.out.utf8)) as? [String: Any])
        let entry = try XCTUnwrap(report["entry"] as? [String: String])
        XCTAssertNil(entry["end_time"], "a run still recording has no end")
        XCTAssertEqual(entry["run_state"], "recording")
        XCTAssertEqual(entry["default"], "cam_image", "without a samples stream, the first frames stream is the default")
        let data = try XCTUnwrap((report["nxdata"] as? [String: [String: Any]])?["/entry/cam_image"]?["datasets"] as? [String: [String: Any]])
        XCTAssertEqual(data["data"]?["shape"] as? [Int], [3, 12], "frames are flattened to rows")
        XCTAssertEqual(data["data"]?["last"] as? [Int], (200..<212).map { $0 })
        XCTAssertEqual((report["dumps"] as? [String: [Double]])?["/entry/cam_image/time"], [0, 1, 2])
        XCTAssertEqual(HDF5.openObjectCount, 0)
    }

    // MARK: CSV

    func testCSVExport_ofASyntheticRun_equalsTheInput() throws {
        let (truth, _) = try writeRun()
        let reader = try RunReader(directory: runDirectory)
        let clocks = try RunClocks.fit(reader)
        let out = directory + "/csv"
        let summary = try CSVExport.write(reader, clocks: clocks, to: out)
        XCTAssertEqual(summary.streams.map(\.output), ["pstat_ei.csv", "xrf_spectrum.csv", "stage_position.csv"])
        XCTAssertEqual(summary.streams.map(\.rows), [truth.pstat.count, truth.spectra.count, truth.stage.count])
        XCTAssertEqual(summary.events, truth.events.count)
        XCTAssertEqual(try FileSystem.list(out), ["events.csv", "pstat_ei.csv", "stage_position.csv", "xrf_spectrum.csv"], "no partial files left")
        XCTAssertEqual(summary.bytes, try FileSystem.list(out).reduce(0) { $0 + ExportFiles.size(out + "/" + $1) })

        // The potentiostat: every value exactly, every time where the refit puts it.
        let p = try Self.csv(out + "/pstat_ei.csv")
        XCTAssertEqual(p.first, ["time [s]", "host_time_ns", "device_time_ns", "time_uncertainty_ns", "sequence", "E [V]", "I [A]", "cycle [1]"])
        XCTAssertEqual(p.count - 1, truth.pstat.count)
        let fit = try XCTUnwrap(clocks.device("pstat"))
        for (k, record) in truth.pstatRecords.enumerated() {
            for r in 0..<2 {
                let j = record.firstRow + r
                let line = p[j + 1]
                XCTAssertEqual(line.count, 8)
                XCTAssertEqual(line[5...].map { Double($0) }, truth.pstat[j].values.map { Optional($0) }, "row \(j): values")
                XCTAssertEqual(line[4], String(k))
                XCTAssertEqual(line[2], String(record.device + Int64(r) * 10_000_000))
                let mapped = fit.map(deviceTime: record.device, hostTime: HostInstant(nanoseconds: truth.pstat[record.firstRow + 1].t))
                let host = try XCTUnwrap(Int64(line[1]))
                XCTAssertLessThanOrEqual(abs(host - (mapped.host.nanoseconds + Int64(r) * 10_000_000)), 1_000_000, "row \(j): where the refit places it")
                XCTAssertLessThanOrEqual(abs(host - truth.pstat[j].t), try XCTUnwrap(Int64(line[3])), "row \(j): within its uncertainty of the truth")
                XCTAssertEqual(try XCTUnwrap(Double(line[0])), Double(host - Self.h0) / 1e9, accuracy: 1e-12)
            }
        }

        // The detector: one line per spectrum, a column per channel.
        let x = try Self.csv(out + "/xrf_spectrum.csv")
        XCTAssertEqual(x.first, ["time [s]", "host_time_ns", "device_time_ns", "time_uncertainty_ns", "sequence"] + (0..<8).map { "counts_\($0) [counts]" })
        XCTAssertEqual(x.count - 1, truth.spectra.count)
        for (j, s) in truth.spectra.enumerated() {
            XCTAssertEqual(x[j + 1][5...].map { UInt32($0) }, s.counts.map { Optional($0) }, "spectrum \(j)")
            XCTAssertEqual(x[j + 1][2], String(Self.device(Self.xClock, s.start)))
        }

        // The stage: host stamps, no device time (empty cells).
        let s = try Self.csv(out + "/stage_position.csv")
        XCTAssertEqual(s.first, ["time [s]", "host_time_ns", "device_time_ns", "time_uncertainty_ns", "sequence", "pos1 [µm]", "encoder1 [um]"])
        XCTAssertEqual(s.count - 1, truth.stage.count)
        for (j, row) in truth.stage.enumerated() {
            XCTAssertEqual(s[j + 1][1], String(row.arrival))
            XCTAssertEqual(s[j + 1][2], "")
            XCTAssertEqual(s[j + 1][5...].map { Double($0) }, row.values.map { Optional($0) })
        }

        // Events: sorted, quoted as RFC 4180 says (a comma and quotes, a line break).
        let e = try Self.csv(out + "/events.csv")
        XCTAssertEqual(
            e.first,
            ["time [s]", "host_time_ns", "device_time_ns", "time_uncertainty_ns", "end_host_time_ns", "stream", "kind", "source", "message", "values_json"])
        XCTAssertEqual(e.dropFirst().map { $0[8] }, truth.events.map(\.message))
        XCTAssertEqual(e.dropFirst().map { $0[6] }, truth.events.map(\.kind))
        let move = try XCTUnwrap(e.first { $0.count > 8 && $0[8] == Self.moveMessage })
        XCTAssertEqual(move[5], "stage/events")
        XCTAssertEqual(move[9], #"{"axis":1,"target_um":2500}"#)
        XCTAssertEqual(move[3], "50000")
        let text = try String(contentsOfFile: out + "/events.csv", encoding: .utf8)
        XCTAssertTrue(text.contains(#""move abs 2500 µm, ""fast""""#), "a field with a comma and quotes is quoted, its quotes doubled")
        XCTAssertTrue(text.hasSuffix("\r\n"))
    }

    // MARK: Damage and failures

    func testExport_whenTheNewestSegmentEndsInATornRecord_exportsEverythingBeforeIt() throws {
        let (truth, run) = try writeRun()
        // The writer died in the middle of a record: its first 40 bytes reached the disk.
        let torn = SegmentFormat.encodeRecord(
            RecordHeader(kind: .data, streamID: 0, sequence: run.sequences[0], hostTime: HostInstant(nanoseconds: Self.h0 + 31_000_000_000), deviceTime: 1),
            payload: SyntheticRun.bytes([1.0, 2.0, 3.0]))
        let fd = try FileDescriptor.open(run.segmentPath, flags: O_WRONLY | O_APPEND)
        try fd.writeAll(Array(torn.prefix(40)))
        fd.close()
        XCTAssertTrue(run.segmentPath.hasSuffix("000002.seg"), "the torn record is at the end of the newest segment")

        let reader = try RunReader(directory: runDirectory)
        let nexus = try NeXusExport.write(reader, to: directory + "/torn.nxs")
        XCTAssertEqual(nexus.streams.map(\.rows), [truth.pstat.count, truth.spectra.count, truth.stage.count])
        XCTAssertEqual(nexus.events, truth.events.count)
        XCTAssertEqual(nexus.tornTailBytes, 40)
        XCTAssertEqual(HDF5.openObjectCount, 0)
        let check = try Self.run("/usr/bin/python3", ["-W", "error", Self.repository + "/Tests/Support/check-nexus.py", directory + "/torn.nxs"])
        XCTAssertEqual(check.status, 0, check.err)

        let csv = try CSVExport.write(reader, to: directory + "/torn-csv")
        XCTAssertEqual(csv.streams.map(\.rows), [truth.pstat.count, truth.spectra.count, truth.stage.count])
        XCTAssertEqual(csv.tornTailBytes, 40)
        XCTAssertEqual(try Self.csv(directory + "/torn-csv/pstat_ei.csv").last?[5...].map { Double($0) }, truth.pstat.last?.values.map { Optional($0) })
    }

    func testNeXusExport_intoAMissingDirectory_failsClearlyAndLeavesNoFile() throws {
        try writeRun()
        let reader = try RunReader(directory: runDirectory)
        let path = directory + "/no/such/dir/run.nxs"
        XCTAssertThrowsError(try NeXusExport.write(reader, to: path)) { error in
            let text = "\(error)"
            XCTAssertTrue(text.contains(path) && text.contains("\(directory)/no/such/dir does not exist"), text)
        }
        XCTAssertFalse(FileSystem.exists(path))
        XCTAssertFalse(FileSystem.exists(path + ".partial"))
        XCTAssertFalse(FileSystem.exists(directory + "/no"), "nothing is created on the way")
        XCTAssertEqual(HDF5.openObjectCount, 0)
    }

    func testExport_whenASegmentCannotBeRead_leavesNoFileAndNoOpenObjects() throws {
        let (_, run) = try writeRun()
        // The newest segment's header is overwritten: the reader refuses it in the middle of the pass.
        let fd = try FileDescriptor.open(run.segmentPath, flags: O_WRONLY)
        try fd.writeAll(Array("NOTASEGM".utf8))
        fd.close()
        let reader = try RunReader(directory: runDirectory)
        let path = directory + "/broken.nxs"
        XCTAssertThrowsError(try NeXusExport.write(reader, clocks: RunClocks(run: "synthetic", devices: []), to: path)) { error in
            XCTAssertTrue("\(error)".contains("not an operandod segment"), "\(error)")
        }
        XCTAssertFalse(FileSystem.exists(path))
        XCTAssertFalse(FileSystem.exists(path + ".partial"))
        XCTAssertEqual(HDF5.openObjectCount, 0, "a failed export closes every HDF5 identifier too")
        XCTAssertThrowsError(try CSVExport.write(reader, clocks: RunClocks(run: "synthetic", devices: []), to: directory + "/broken-csv"))
        XCTAssertEqual(try FileSystem.list(directory + "/broken-csv"), [], "no CSV file, partial or not, after a failed export")
    }

    // MARK: The HDF5 layer

    func testHDF5_appendableDatasetsGrowInBatches_andEveryIdentifierCloses() throws {
        let path = directory + "/layer.h5"
        let file = try HDF5File.create(path)
        let group = try file.createGroup("g", nxClass: "NXcollection")
        let frames = try group.createAppendableDataset("frames", type: .uint32, rowShape: [3], chunking: HDF5Chunking(rows: 2))
        for batch in 0..<3 {
            let values = (0..<(3 * (batch + 1))).map { UInt32(batch * 100 + $0) }
            try values.withUnsafeBytes { try frames.append(rows: batch + 1, littleEndian: $0) }
        }
        XCTAssertEqual(frames.rows, 6)
        let column = try group.createAppendableDataset("column", type: .float64, chunking: .sized(rowElements: 1, elementSize: 8))
        try column.append([1.5, 2.5])
        try column.append([Double]([]))
        try column.append([3.5])
        try column.setAttribute("units", "V")
        try group.writeDataset("names", strings: ["a", "b,c", "ü"]).close()
        try group.writeScalar("flag", true).close()
        try group.link(column, as: "same")
        XCTAssertThrowsError(try file.close(), "the file does not close under an open object") { error in
            XCTAssertEqual((error as? HDF5Error)?.call, "H5Fclose")
        }
        for object in [frames, column] as [HDF5Object] { try object.close() }
        try group.close()
        XCTAssertThrowsError(try group.createGroup("late")) { error in
            XCTAssertTrue("\(error)".contains("closed already"), "\(error)")
        }
        let file2 = try HDF5File.create(directory + "/layer2.h5")
        XCTAssertEqual(HDF5.openObjectCount, 2, "the two files are still open")
        try file2.close()
        try file.close()
        XCTAssertEqual(HDF5.openObjectCount, 0)

        let read = try Self.run(
            "/usr/bin/python3",
            [
                "-W", "error", "-c",
                """
                import h5py, json
                f = h5py.File('\(path)', 'r')
                g = f['g']
                print(json.dumps({'frames': g['frames'][()].tolist(), 'chunks': list(g['frames'].chunks), 'column': g['column'][()].tolist(),
                                  'units': g['column'].attrs['units'], 'names': g['names'].asstr()[()].tolist(), 'flag': bool(g['flag'][()]),
                                  'flag_dtype': str(g['flag'].dtype), 'same': g['same'].id == g['column'].id, 'nx': g.attrs['NX_class'],
                                  'compression': g['frames'].compression, 'shuffle': g['frames'].shuffle, 'maxshape': [-1 if m is None else m for m in g['frames'].maxshape]}))
                """,
            ])
        XCTAssertEqual(read.status, 0, read.err)
        let r = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(read.out.utf8)) as? [String: Any])
        XCTAssertEqual(r["frames"] as? [[Int]], [[0, 1, 2], [100, 101, 102], [103, 104, 105], [200, 201, 202], [203, 204, 205], [206, 207, 208]])
        XCTAssertEqual(r["chunks"] as? [Int], [2, 3])
        XCTAssertEqual(r["column"] as? [Double], [1.5, 2.5, 3.5])
        XCTAssertEqual(r["units"] as? String, "V")
        XCTAssertEqual(r["names"] as? [String], ["a", "b,c", "ü"])
        XCTAssertEqual(r["flag"] as? Bool, true)
        XCTAssertEqual(r["flag_dtype"] as? String, "bool")
        XCTAssertEqual(r["same"] as? Bool, true)
        XCTAssertEqual(r["nx"] as? String, "NXcollection")
        XCTAssertEqual(r["compression"] as? String, "gzip")
        XCTAssertEqual(r["shuffle"] as? Bool, true)
        XCTAssertEqual(r["maxshape"] as? [Int], [-1, 3], "unlimited rows (None in h5py), fixed row length")
    }

    /// A whole dataset large enough to be compressed but shorter than a default chunk (a long
    /// frame's channel axis: 3 channels × 2 directions × 32 lines × 64 pixels) is written with a
    /// chunk no longer than itself, and reads back.
    func testHDF5_compressedWholeDataset_shorterThanADefaultChunk_isWritten() throws {
        let path = directory + "/short.h5"
        let file = try HDF5File.create(path)
        let values = (0..<12_288).map { Int64($0) }
        try file.writeDataset("channel", values).close()
        try file.close()
        let dump = Process()
        dump.executableURL = URL(fileURLWithPath: "/usr/bin/h5dump")
        dump.arguments = ["-H", "-p", path]
        let out = Pipe()
        dump.standardOutput = out
        try dump.run()
        let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        dump.waitUntilExit()
        XCTAssertEqual(dump.terminationStatus, 0)
        XCTAssertTrue(text.contains("DEFLATE"), text)
        XCTAssertTrue(text.contains("12288"), text)
    }

    func testHDF5Error_carriesTheCallThePathAndHDF5sOwnMessage() throws {
        let path = directory + "/missing/x.h5"
        XCTAssertThrowsError(try HDF5File.create(path)) { error in
            guard let e = error as? HDF5Error else { return XCTFail("\(error)") }
            XCTAssertEqual(e.call, "H5Fcreate")
            XCTAssertEqual(e.path, path)
            XCTAssertTrue(e.message.contains("No such file or directory"), e.message)
        }
        XCTAssertEqual(HDF5.openObjectCount, 0)
    }

    func testJSONTree_mirrorsAnyEncodableMetadata() throws {
        struct Nested: Encodable {
            var name = "cell"
            var cycles = 3
            var voltage = 4.2
            var calibrated = true
            var limits = [2.5, 4.2]
            var tags = ["a", "b"]
            var none: String? = nil
            var inner = ["k": [1, 2]]
            var big: Int64 = 1 << 60
        }
        let tree = try JSONTree(encoding: Nested())
        guard case .object(let members) = tree else { return XCTFail("\(tree)") }
        let m = Dictionary(members, uniquingKeysWith: { a, _ in a })
        XCTAssertEqual(m["name"], .string("cell"))
        XCTAssertEqual(m["cycles"], .integer(3))
        XCTAssertEqual(m["voltage"], .number(4.2))
        XCTAssertEqual(m["calibrated"], .bool(true))
        XCTAssertEqual(m["limits"], .array([.number(2.5), .number(4.2)]))
        XCTAssertEqual(m["tags"], .array([.string("a"), .string("b")]))
        XCTAssertEqual(m["inner"], .object([("k", .array([.integer(1), .integer(2)]))]))
        XCTAssertEqual(m["big"], .integer(1 << 60))
        XCTAssertEqual(
            tree.json,
            #"{"big":1152921504606846976,"calibrated":true,"cycles":3,"inner":{"k":[1,2]},"limits":[2.5,4.2],"name":"cell","tags":["a","b"],"voltage":4.2}"#)

        // Written as groups and datasets.
        let path = directory + "/tree.h5"
        let file = try HDF5File.create(path)
        let group = try file.createGroup("metadata", nxClass: "NXcollection")
        for (key, value) in members { try NXTreeWriter.write(value, key: key, name: ExportPlan.nexusName(key), into: group) }
        try NXTreeWriter.write(.array([.string("x"), .integer(1)]), key: "mixed list", name: "mixed_list", into: group)
        try group.close()
        try file.close()
        let read = try Self.run(
            "/usr/bin/python3",
            [
                "-W", "error", "-c",
                """
                import h5py, json
                g = h5py.File('\(path)', 'r')['metadata']
                print(json.dumps({'cycles': g['cycles'][()].item(), 'cycles_dtype': str(g['cycles'].dtype), 'voltage': float(g['voltage'][()]), 'calibrated': bool(g['calibrated'][()]),
                                  'limits': g['limits'][()].tolist(), 'tags': g['tags'].asstr()[()].tolist(), 'inner_k': g['inner/k'][()].tolist(),
                                  'inner_class': g['inner'].attrs['NX_class'], 'mixed': g['mixed_list'].asstr()[()], 'mixed_key': g['mixed_list'].attrs['key'],
                                  'big': int(g['big'][()]), 'big_dtype': str(g['big'].dtype)}))
                """,
            ])
        XCTAssertEqual(read.status, 0, read.err)
        let r = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(read.out.utf8)) as? [String: Any])
        XCTAssertEqual(r["cycles"] as? Double, 3)
        XCTAssertEqual(r["cycles_dtype"] as? String, "float64", "metadata numbers are float64 even when written without a fraction")
        XCTAssertEqual(r["voltage"] as? Double, 4.2)
        XCTAssertEqual(r["calibrated"] as? Bool, true)
        XCTAssertEqual(r["limits"] as? [Double], [2.5, 4.2])
        XCTAssertEqual(r["tags"] as? [String], ["a", "b"])
        XCTAssertEqual(r["inner_k"] as? [Double], [1, 2])
        XCTAssertEqual(r["inner_class"] as? String, "NXcollection")
        XCTAssertEqual(r["mixed"] as? String, #"["x",1]"#)
        XCTAssertEqual(r["mixed_key"] as? String, "mixed list")
        XCTAssertEqual(r["big"] as? Int, 1 << 60, "an integer a float64 cannot hold exactly stays int64")
        XCTAssertEqual(r["big_dtype"] as? String, "int64")
        XCTAssertEqual(HDF5.openObjectCount, 0)
    }

    // MARK: Helpers

    /// Runs a program to completion; its output goes through files (no pipe can fill up).
    static func run(_ executable: String, _ arguments: [String]) throws -> (status: Int32, out: String, err: String) {
        let base = NSTemporaryDirectory() + "operando-export-run-\(UUID().uuidString)"
        _ = FileManager.default.createFile(atPath: base + ".out", contents: nil)
        _ = FileManager.default.createFile(atPath: base + ".err", contents: nil)
        defer {
            try? FileManager.default.removeItem(atPath: base + ".out")
            try? FileManager.default.removeItem(atPath: base + ".err")
        }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: executable)
        p.arguments = arguments
        p.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: base + ".out"))
        p.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: base + ".err"))
        try p.run()
        p.waitUntilExit()
        return (p.terminationStatus, try String(contentsOfFile: base + ".out", encoding: .utf8), try String(contentsOfFile: base + ".err", encoding: .utf8))
    }

    /// Parses a CSV file as RFC 4180 says (quoted fields may hold commas, quotes and line breaks).
    static func csv(_ path: String) throws -> [[String]] {
        let text = Array(try String(contentsOfFile: path, encoding: .utf8).unicodeScalars)
        var rows: [[String]] = []
        var row: [String] = []
        var field = ""
        var quoted = false
        var i = 0
        while i < text.count {
            let c = text[i]
            if quoted {
                if c == "\"" {
                    if i + 1 < text.count && text[i + 1] == "\"" {
                        field.unicodeScalars.append("\"")
                        i += 1
                    } else {
                        quoted = false
                    }
                } else {
                    field.unicodeScalars.append(c)
                }
            } else if c == "\"" {
                quoted = true
            } else if c == "," {
                row.append(field)
                field = ""
            } else if c == "\r" && i + 1 < text.count && text[i + 1] == "\n" {
                row.append(field)
                rows.append(row)
                row = []
                field = ""
                i += 1
            } else {
                field.unicodeScalars.append(c)
            }
            i += 1
        }
        if !field.isEmpty || !row.isEmpty {
            row.append(field)
            rows.append(row)
        }
        return rows
    }
}
