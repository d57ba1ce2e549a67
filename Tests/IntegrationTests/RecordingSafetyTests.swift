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

/// What survives a crash and a full disk, with the daemon as a child process.
final class RecordingSafetyTests: XCTestCase {
    static func config(extra: String = "") -> String {
        """
        [daemon]
        memory_budget_mb = 64
        ring_mb = 4
        sync_interval_ms = 100
        segment_mb = 1
        \(extra)

        [[device]]
        name = "pstat"
        driver = "demo-potentiostat"
        transport = "simulated"
        [device.settings]
        rate_hz = 500

        [[device]]
        name = "xrf"
        driver = "demo-xrf"
        transport = "simulated"
        [device.settings]
        channels = 1024
        interval_ms = 50

        [[device]]
        name = "stage"
        driver = "zaber-ascii"
        transport = "simulated"
        """
    }

    private func written(_ s: StatusResult) -> [String: UInt64] {
        Dictionary(uniqueKeysWithValues: s.streams.map { ($0.name, $0.written) })
    }

    /// kill -9 at several moments of a run with several streams; the next daemon recovers each run:
    /// every record the daemon had reported written is on disk, whole, in an unbroken sequence, and
    /// the counts in the manifest are those of the files.
    func testKill9_atRandomMoments_nextStartRecoversEveryWrittenRecord() throws {
        let directory = NSTemporaryDirectory() + "odcrash-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var random = SeededRandom(seed: UInt64(Date().timeIntervalSince1970))
        var acknowledged: [String: [String: UInt64]] = [:]
        for i in 0..<3 {
            let d = try DaemonProcess(config: Self.config(), directory: directory)
            d.removesDirectory = false
            try d.waitForStatus("devices connected") { $0.devicesConnected == 3 }
            let name = "crash-\(i)"
            _ = try d.json(RunInfo.self, ["run", "start", name])
            try d.waitForStatus("data flowing") { ($0.streams.first { $0.name == "xrf/spectrum" }?.written ?? 0) >= 10 }
            // A random moment: somewhere in the next 0.1–1.1 s of recording.
            ThreadSleep.sleep(.milliseconds(100 + Int64(random.uniform() * 1000)))
            if i == 2 {
                // A run still recording exports what is on disk so far.
                let live = directory + "/live.nxs"
                let exported = try d.ctl(["export", name, "--output", live])
                XCTAssertEqual(exported.status, 0, exported.err)
                try Self.checkNeXus(live)
            }
            acknowledged[name] = written(try d.json(StatusResult.self, ["status"]))
            d.kill9()
        }

        let d = try DaemonProcess(config: Self.config(), directory: directory)
        // Recovery runs in the background at start; wait for it.
        for _ in 0..<600 {
            let runs = try d.json([RunListEntry].self, ["run", "list"])
            if runs.count == 3 && runs.allSatisfy({ $0.run.state == "recovered" }) { break }
            ThreadSleep.sleep(.milliseconds(50))
        }
        let runs = try d.json([RunListEntry].self, ["run", "list"])
        XCTAssertEqual(runs.map(\.run.state), ["recovered", "recovered", "recovered"], d.logText())
        for entry in runs {
            let disk = try RunOnDisk(directory: entry.run.directory)
            let manifest = disk.manifest
            XCTAssertEqual(disk.damaged, 0, entry.run.name)
            XCTAssertEqual(disk.torn, 0, "\(entry.run.name): torn tails were cut")
            XCTAssertNotNil(manifest.recovery)
            XCTAssertEqual(manifest.recovery?.by, "daemon start")
            XCTAssertNotNil(manifest.stoppedAt)
            let before = try XCTUnwrap(acknowledged[entry.run.name])
            for counts in try XCTUnwrap(manifest.summary) {
                let onDisk = UInt64(disk.stream(counts.name).count)
                XCTAssertEqual(counts.written, onDisk, "\(entry.run.name) \(counts.name): the manifest counts what is on disk")
                XCTAssertGreaterThanOrEqual(onDisk, before[counts.name] ?? 0, "\(entry.run.name) \(counts.name): everything reported written before the kill is there")
                disk.assertContiguous(counts.name)
            }
            XCTAssertGreaterThan(disk.stream("pstat/ei").count, 100)
        }
        XCTAssertTrue(d.logText().contains("recovered run crash-0"), d.logText())
        // A recovered run exports, and an independent reader (h5py) accepts the file.
        let file = directory + "/crash-0.nxs"
        let exported = try d.ctl(["export", "crash-0", "--output", file])
        XCTAssertEqual(exported.status, 0, exported.err)
        let summary = try Self.checkNeXus(file)
        let rows = ((summary["nxdata"] as? [String: Any])?["/entry/pstat_ei"] as? [String: Any])?["rows"] as? Int
        let crash0 = try XCTUnwrap(runs.first { $0.run.name == "crash-0" })
        XCTAssertEqual(rows, try RunOnDisk(directory: crash0.run.directory).stream("pstat/ei").count, "every recovered sample is in the export")
        let csv = try d.ctl(["export", "crash-0", "--format", "csv", "--output", directory + "/crash-0-csv"])
        XCTAssertEqual(csv.status, 0, csv.err)
        XCTAssertTrue(FileManager.default.fileExists(atPath: directory + "/crash-0-csv/pstat_ei.csv"))
        // A recovered run is closed: recover again refuses, unless forced (which re-verifies).
        let again = try d.ctl(["recover", "crash-1"])
        XCTAssertNotEqual(again.status, 0)
        XCTAssertTrue(again.err.contains("nothing to recover"), again.err)
        let forced = try d.json(RunListEntry.self, ["recover", "crash-1", "--force"])
        XCTAssertEqual(forced.records, runs.first { $0.run.name == "crash-1" }?.records)
        // The daemon records new runs as usual afterwards.
        _ = try d.json(RunInfo.self, ["run", "start", "after"])
        _ = try d.json(RunStopResult.self, ["run", "stop"])
        XCTAssertEqual(d.terminate(), 0)
    }

    /// Runs Tests/Support/check-nexus.py (h5py) on `file`; returns its JSON summary.
    @discardableResult
    static func checkNeXus(_ file: String) throws -> [String: Any] {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        p.arguments = [Binaries.packageRoot + "/Tests/Support/check-nexus.py", file]
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        let o = out.fileHandleForReading.readDataToEndOfFile()
        let e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else { throw Failure("check-nexus.py \(file) failed: \(String(decoding: e, as: UTF8.self))") }
        return (try JSONSerialization.jsonObject(with: o) as? [String: Any]) ?? [:]
    }

    /// A daemon under the fault shim: its data directory is "full" while the returned flag file exists.
    private func daemonOnAFillableDisk(extra: String) throws -> (DaemonProcess, flag: String) {
        let shim = Binaries.directory + "/liboperando-fault-shim.so"
        guard FileManager.default.fileExists(atPath: shim) else { throw Failure("\(shim) is not built (swift build builds it)") }
        let directory = NSTemporaryDirectory() + "odfull-\(UUID().uuidString.prefix(8))"
        try FileSystem.makeDirectories(directory + "/data")
        let d = try DaemonProcess(
            config: Self.config(extra: extra), directory: directory, environment: ["LD_PRELOAD": shim, "OPERANDO_FAULT_DIR": directory + "/data"])
        try d.waitForStatus("devices connected") { $0.devicesConnected == 3 }
        return (d, directory + "/data/.disk-full")
    }

    /// The disk fills up mid-run (simulated by the fault shim: writes under the data directory fail
    /// with ENOSPC, after one short write). The run pauses with an alarm, the daemon stays up and
    /// answers, nothing written before is damaged, and recording resumes in a new segment when
    /// space returns; what arrived meanwhile is counted as dropped and the gap is recorded.
    func testDiskFull_midRun_pausesAndResumesWithoutDamage() throws {
        let (d, flag) = try daemonOnAFillableDisk(extra: "on_write_error = \"pause\"\nresume_free_mb = 1")
        let run = try d.json(RunInfo.self, ["run", "start", "filling"])
        try d.waitForStatus("data written") { ($0.streams.first { $0.name == "pstat/ei" }?.written ?? 0) >= 500 }

        XCTAssertTrue(FileManager.default.createFile(atPath: flag, contents: nil))
        try d.waitForStatus("paused") { $0.state == "paused" }
        let paused = try d.json(StatusResult.self, ["status"])
        XCTAssertTrue(paused.paused?.contains("No space left on device") ?? false, "\(paused.paused ?? "nil")")
        XCTAssertEqual(paused.freeBytes, 0)
        XCTAssertEqual(try d.json([DeviceInfo].self, ["devices"]).filter { $0.state == "connected" }.count, 3, "devices keep running")
        XCTAssertTrue(try d.ctl(["status"]).out.contains("PAUSED:"))
        let writtenWhilePaused = written(paused)["pstat/ei"] ?? 0
        ThreadSleep.sleep(.milliseconds(300))
        XCTAssertEqual(written(try d.json(StatusResult.self, ["status"]))["pstat/ei"], writtenWhilePaused, "nothing is written while the disk is full")

        try FileManager.default.removeItem(atPath: flag)
        try d.waitForStatus("resumed") { $0.state == "recording" && ($0.streams.first { $0.name == "pstat/ei" }?.written ?? 0) > writtenWhilePaused + 200 }
        let stop = try d.json(RunStopResult.self, ["run", "stop"])
        XCTAssertEqual(stop.run.state, "complete")

        let disk = try RunOnDisk(directory: run.directory)
        XCTAssertEqual(disk.damaged, 0, "the short write was cut back")
        XCTAssertEqual(disk.torn, 0)
        XCTAssertGreaterThanOrEqual(disk.manifest.segments, 2, "resumed in a new segment")
        let interruptions = try XCTUnwrap(disk.manifest.interruptions)
        XCTAssertEqual(interruptions.count, 1)
        XCTAssertTrue(interruptions[0].error.contains("No space left"))
        XCTAssertGreaterThan(interruptions[0].lostRecords, 0)
        let ei = try XCTUnwrap(stop.streams.first { $0.name == "pstat/ei" })
        XCTAssertGreaterThan(ei.dropped, 0, "what arrived while paused is counted as dropped")
        XCTAssertEqual(ei.produced, ei.written + ei.dropped)
        XCTAssertEqual(UInt64(disk.stream("pstat/ei").count), ei.written)
        let gap = try XCTUnwrap(disk.events.first { $0.kind == .gap && $0.source == "daemon" }, "\(disk.events.map(\.message))")
        XCTAssertTrue(gap.message.contains("No space left"), gap.message)
        XCTAssertNotNil(gap.endTime)
        XCTAssertEqual(d.terminate(), 0)
    }

    /// With on_write_error = "stop" a full disk closes the run as failed; the daemon stays up and
    /// records the next run once there is room.
    func testDiskFull_stopPolicy_closesTheRunAsFailedAndTheDaemonStaysUp() throws {
        let (d, flag) = try daemonOnAFillableDisk(extra: "on_write_error = \"stop\"")
        _ = try d.json(RunInfo.self, ["run", "start", "doomed"])
        try d.waitForStatus("data written") { ($0.streams.first { $0.name == "pstat/ei" }?.written ?? 0) >= 100 }
        XCTAssertTrue(FileManager.default.createFile(atPath: flag, contents: nil))
        try d.waitForStatus("the run closed") { $0.state == "idle" && $0.writeError != nil }
        // The manifest itself cannot be written on a full disk: it is once there is room.
        try FileManager.default.removeItem(atPath: flag)
        var runs: [RunListEntry] = []
        for _ in 0..<400 {
            runs = try d.json([RunListEntry].self, ["run", "list"])
            if runs.first?.run.state == "failed" { break }
            ThreadSleep.sleep(.milliseconds(50))
        }
        XCTAssertEqual(runs.first?.run.state, "failed", d.logText())
        let disk = try RunOnDisk(directory: try XCTUnwrap(runs.first?.run.directory))
        XCTAssertEqual(disk.damaged, 0)
        XCTAssertEqual(disk.torn, 0)
        XCTAssertTrue(disk.manifest.stopReason?.contains("No space left") ?? false)
        _ = try d.json(RunInfo.self, ["run", "start", "next"])
        try d.waitForStatus("the next run records") { ($0.streams.first { $0.name == "pstat/ei" }?.written ?? 0) >= 100 }
        XCTAssertEqual(try d.json(RunStopResult.self, ["run", "stop"]).run.state, "complete")
        XCTAssertEqual(d.terminate(), 0)
    }

    /// run start checks experiment metadata against the schema and the planned duration against
    /// the free space.
    func testRunStart_checksMetadataAndSpace() throws {
        let d = try DaemonProcess(config: Self.config(extra: "require_metadata = true"))
        let bare = try d.ctl(["run", "start", "bare"])
        XCTAssertNotEqual(bare.status, 0)
        XCTAssertTrue(bare.err.contains("requires experiment metadata"), bare.err)

        let partial = try d.ctl(["run", "start", "partial", "--meta", "cell.format=CR2032", "--meta", "electrolyte.concentration_mol_per_l=\"1 M\""])
        XCTAssertNotEqual(partial.status, 0)
        for field in ["cell.working_electrode is required", "electrolyte.salt is required", "regime is required", "electrolyte.concentration_mol_per_l must be a number"] {
            XCTAssertTrue(partial.err.contains(field), "\(field) in: \(partial.err)")
        }

        let file = try DaemonTests.experimentFile()
        let huge = try d.ctl(["run", "start", "huge", "--meta-file", file, "--duration", "100000000h"])
        XCTAssertNotEqual(huge.status, 0)
        XCTAssertTrue(huge.err.contains("free") && huge.err.contains("force"), huge.err)

        let run = try d.json(RunInfo.self, ["run", "start", "ok", "--meta-file", file, "--meta", "lab.room=B12", "--meta", "temperature_c=30", "--duration", "100000000h", "--force"])
        XCTAssertTrue(run.warnings?.first?.contains("started anyway") ?? false, "\(run.warnings ?? [])")
        XCTAssertGreaterThan(run.estimatedBytesPerSecond ?? 0, 100_000, "500 Hz samples and 20 spectra/s of 4 KiB")
        _ = try d.json(RunStopResult.self, ["run", "stop"])
        let m = try RunManifest.load(run.directory + "/run.json")
        XCTAssertEqual(m.metadata["cell"]?[path: "counter_electrode"], .string("graphite on Cu"))
        XCTAssertEqual(m.metadata["electrolyte"]?[path: "solvents"], .array([.string("EC"), .string("DMC")]))
        XCTAssertEqual(m.metadata["temperature_c"], .number(30), "--meta overrides the file, as a number")
        XCTAssertEqual(m.metadata["lab"]?[path: "room"], .string("B12"), "fields the schema does not know are kept")
        XCTAssertEqual(d.terminate(), 0)
    }
}
