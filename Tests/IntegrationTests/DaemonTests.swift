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

final class DaemonTests: XCTestCase {
    static func config(extra: String = "", pstatTransport: String = "simulated") -> String {
        """
        [daemon]
        memory_budget_mb = 64
        ring_mb = 4
        sync_interval_ms = 100
        log_level = "debug"

        [simulation]
        time_scale = 600

        [[device]]
        name = "pstat"
        driver = "demo-potentiostat"
        transport = "\(pstatTransport)"
        [device.settings]
        rate_hz = 500

        [[device]]
        name = "xrf"
        driver = "demo-xrf"
        transport = "simulated"
        [device.settings]
        channels = 1024
        interval_ms = 50
        \(extra)
        """
    }

    /// The demo's experiment metadata file (it satisfies the schema).
    static func experimentFile() throws -> String {
        let path = Binaries.packageRoot + "/Config/demo-experiment.toml"
        guard FileManager.default.fileExists(atPath: path) else { throw Failure("\(path) is missing") }
        return path
    }

    private func waitForData(_ d: DaemonProcess, streams: [String] = ["pstat/ei", "xrf/spectrum"], atLeast n: UInt64 = 20) throws {
        try d.waitForStatus("\(n) records written on \(streams)") { s in
            streams.allSatisfy { name in (s.streams.first { $0.name == name }?.written ?? 0) >= n }
        }
    }

    func testRecord_throughOperandoctl_writtenEqualsProducedAndNothingDropped() throws {
        let d = try DaemonProcess(config: Self.config())
        let devices = try d.json([DeviceInfo].self, ["devices"])
        XCTAssertEqual(Set(devices.map(\.name)), ["pstat", "xrf"])
        try d.waitForStatus("devices connected") { $0.devicesConnected == 2 }

        let run = try d.json(RunInfo.self, ["run", "start", "cycle-1", "--meta-file", try Self.experimentFile(), "--meta", "cell.format=CR2032", "--meta", "operator=test"])
        XCTAssertEqual(run.state, "recording")
        try waitForData(d)
        XCTAssertEqual(try d.ctl(["mark", "electrolyte", "added"]).status, 0)
        let status = try d.json(StatusResult.self, ["status"])
        XCTAssertEqual(status.state, "recording")
        XCTAssertEqual(status.run?.name, "cycle-1")
        XCTAssertGreaterThan(status.streams.first { $0.name == "pstat/ei" }?.ratePerSecond ?? 0, 0)

        let tail = try d.json(TailResult.self, ["tail", "pstat/ei"])
        XCTAssertEqual(tail.columns, ["E (V)", "I (A)", "cycle (1)"])
        XCTAssertFalse(tail.entries.isEmpty)

        let stop = try d.json(RunStopResult.self, ["run", "stop", "--reason", "test done"])
        XCTAssertEqual(stop.run.state, "complete")
        for s in stop.streams {
            XCTAssertEqual(s.written, s.produced, s.name)
            XCTAssertEqual(s.dropped, 0, s.name)
        }
        XCTAssertGreaterThan(stop.streams.first { $0.name == "pstat/ei" }?.written ?? 0, 20)

        // Read the files back independently: every record checks, sequences have no gaps, and
        // the counts match what the daemon reported.
        let disk = try RunOnDisk(directory: stop.run.directory)
        XCTAssertEqual(disk.damaged, 0)
        XCTAssertEqual(disk.torn, 0)
        XCTAssertEqual(disk.manifest.metadata["cell"]?[path: "format"], .string("CR2032"))
        XCTAssertEqual(disk.manifest.metadata["operator"], .string("test"))
        XCTAssertTrue(disk.manifest.provenance.configText.contains("demo-potentiostat"))
        XCTAssertEqual(disk.manifest.provenance.devices.first { $0.name == "pstat" }?.identity?.model, "DEMO-PSTAT")
        for s in stop.streams {
            XCTAssertEqual(UInt64(disk.stream(s.name).count), s.written, s.name)
            disk.assertContiguous(s.name)
        }
        XCTAssertTrue(disk.events.contains { $0.kind == .marker && $0.message == "electrolyte added" })
        XCTAssertTrue(disk.events.contains { $0.kind == .stateChange && $0.message.contains("run cycle-1 started") })
        // Spectra on disk are 1024 u32 channels.
        XCTAssertTrue(disk.stream("xrf/spectrum").allSatisfy { $0.payload.count == 4096 })

        let list = try d.json([RunListEntry].self, ["run", "list"])
        XCTAssertEqual(list.map(\.run.name), ["cycle-1"])
        XCTAssertEqual(list.first?.dropped, 0)
        XCTAssertEqual(d.terminate(), 0)
    }

    func testSIGTERM_duringRun_drainsEverythingAndExitsZero() throws {
        let d = try DaemonProcess(config: Self.config(), watchdogMicroseconds: 400_000)
        XCTAssertTrue(d.notify.wait(for: "STATUS="), "STATUS= line")
        XCTAssertTrue(d.notify.wait(for: "WATCHDOG=1"), "WATCHDOG=1 at half of WATCHDOG_USEC")
        let run = try d.json(RunInfo.self, ["run", "start", "interrupted"])
        try waitForData(d)
        XCTAssertTrue(d.notify.wait(for: "STATUS=recording interrupted, 2/2 devices connected"), "periodic STATUS= summary: \(d.notify.messages)")
        kill(d.process.processIdentifier, SIGTERM)
        d.process.waitUntilExit()
        XCTAssertEqual(d.process.terminationStatus, 0, d.logText())
        XCTAssertTrue(d.notify.wait(for: "STOPPING=1"))

        let disk = try RunOnDisk(directory: run.directory)
        XCTAssertEqual(disk.manifest.state, .complete)
        XCTAssertTrue(disk.manifest.stopReason?.contains("SIGTERM") ?? false, disk.manifest.stopReason ?? "")
        XCTAssertEqual(disk.damaged, 0)
        XCTAssertEqual(disk.torn, 0)
        for s in disk.manifest.summary ?? [] {
            XCTAssertEqual(s.dropped, 0, s.name)
            XCTAssertEqual(s.written, s.produced, s.name)
            XCTAssertEqual(UInt64(disk.stream(s.name).count), s.written, s.name)
            disk.assertContiguous(s.name)
        }
        XCTAssertGreaterThan(disk.stream("pstat/ei").count, 20)
        XCTAssertFalse(FileManager.default.fileExists(atPath: d.socket), "the socket file is removed at exit")
    }

    func testControlSocket_badInput_neverHurtsTheDaemonOrOtherClients() throws {
        let d = try DaemonProcess(config: Self.config())
        var st = stat()
        XCTAssertEqual(stat(d.socket, &st), 0)
        XCTAssertEqual(st.st_mode & 0o777, 0o660, "socket mode")

        let watcher = try UnixConnection.connect(to: d.socket)
        let client = try UnixConnection.connect(to: d.socket)
        func reply(_ c: UnixConnection) throws -> ControlReply {
            var framer = LineFramer(maxLineBytes: 1 << 20)
            for _ in 0..<100 {
                guard let bytes = try c.receive(timeout: .milliseconds(100)) else { continue }
                if case .line(let l)? = framer.feed(bytes).first { return try JSONDecoder().decode(ControlReply.self, from: Data(l)) }
            }
            throw Failure("no reply")
        }
        let cases: [([UInt8], ControlErrorCode)] = [
            (Array("garbage\n".utf8), .badJSON),
            ([0xFF, 0xFE, 0x00, 0x01, 0x0A], .badJSON),
            (Array("{\"id\":1}\n".utf8), .badRequest),
            (Array("{\"id\":2,\"cmd\":\"launch\"}\n".utf8), .unknownCommand),
            (Array("{\"id\":3,\"cmd\":\"tail\",\"args\":{\"stream\":\"nope\"}}\n".utf8), .notFound),
            (Array("{\"id\":4,\"cmd\":\"mark\",\"args\":{\"text\":5}}\n".utf8), .badArguments),
            (Array("{\"id\":5,\"cmd\":\"run.stop\"}\n".utf8), .conflict),
            (Array(repeating: UInt8(ascii: "a"), count: 100_000) + [0x0A], .tooLarge),
        ]
        for (bytes, code) in cases {
            try client.send(bytes)
            let r = try reply(client)
            XCTAssertFalse(r.ok)
            XCTAssertEqual(r.error?.code, code, String(decoding: bytes.prefix(40), as: UTF8.self))
        }
        // The same connection still works, and so does another one.
        try client.send(Array("{\"id\":9,\"cmd\":\"status\"}\n".utf8))
        XCTAssertEqual(try reply(client).id, .number(9))
        // A client that leaves mid-request, one that sends half a line and hangs up, one that only connects.
        for partial in ["{\"id\":1,\"cmd\":\"sta", "", "{\"id\":1,\"cmd\":\"status\"}\n"] {
            let c = try UnixConnection.connect(to: d.socket)
            if !partial.isEmpty { try c.send(Array(partial.utf8)) }
            c.shutdownWrite()
        }
        try watcher.send(Array("{\"id\":\"w\",\"cmd\":\"devices\"}\n".utf8))
        let w = try reply(watcher)
        XCTAssertTrue(w.ok)
        XCTAssertEqual(w.id, .string("w"))
        XCTAssertTrue(d.process.isRunning)
        XCTAssertTrue(d.logText().contains("control connection #1 from pid \(getpid()) uid \(getuid())"), "peer credentials are logged")
        XCTAssertEqual(d.terminate(), 0)
    }

    /// Each control connection has a thread; finished ones must give their stacks back, or a
    /// script polling `status` would exhaust the daemon's memory over a long run.
    func testControlConnections_manyShortOnes_doNotAccumulateThreadStacks() throws {
        let d = try DaemonProcess(config: Self.config())
        func field(_ name: String) throws -> Int {
            // /proc files report size 0: read them to the end, not by their size.
            let status = String(decoding: try FileSystem.readAll("/proc/\(d.process.processIdentifier)/status"), as: UTF8.self)
            let line = try XCTUnwrap(status.split(separator: "\n").first { $0.hasPrefix(name + ":") })
            return try XCTUnwrap(Int(line.split(whereSeparator: { $0 == " " || $0 == "\t" })[1]))
        }
        /// Memory mappings: each thread stack not given back stays one (plus its guard page).
        func mappings() throws -> Int {
            String(decoding: try FileSystem.readAll("/proc/\(d.process.processIdentifier)/maps"), as: UTF8.self).split(separator: "\n").count
        }
        _ = try d.json(StatusResult.self, ["status"])
        let threads = try field("Threads")
        let before = try mappings()
        for i in 0..<200 {
            let c = try UnixConnection.connect(to: d.socket)
            try c.send(Array("{\"id\":\(i),\"cmd\":\"status\"}\n".utf8))
            _ = try c.receive(timeout: .seconds(5))
        }
        // Wait until every connection thread has ended (the count is back where it was).
        for _ in 0..<500 where try field("Threads") > threads { ThreadSleep.sleep(.milliseconds(20)) }
        XCTAssertLessThanOrEqual(try field("Threads"), threads)
        let after = try mappings()
        // 200 ended-but-unreleased stacks would add about 400 mappings; allow a few for new malloc
        // arenas and the C library's small cache of reusable stacks.
        XCTAssertLessThan(after - before, 60, "memory mappings grew from \(before) to \(after)")
        XCTAssertEqual(d.terminate(), 0)
    }

    func testSimulatedUnplug_midRun_recordsGapAndKeepsRecording() throws {
        let d = try DaemonProcess(config: Self.config())
        let run = try d.json(RunInfo.self, ["run", "start", "unplugged"])
        try waitForData(d)
        XCTAssertEqual(try d.ctl(["sim", "unplug", "pstat"]).status, 0)
        try d.waitForStatus("pstat disconnected") { $0.devicesConnected == 1 }
        let disconnected = try d.json([DeviceInfo].self, ["devices"]).first { $0.name == "pstat" }
        XCTAssertEqual(disconnected?.state, "disconnected")
        XCTAssertNotNil(disconnected?.lastError)
        let before = try d.json(StatusResult.self, ["status"]).streams.first { $0.name == "pstat/ei" }!.written
        XCTAssertEqual(try d.ctl(["sim", "replug", "pstat"]).status, 0)
        try d.waitForStatus("pstat back and recording") { s in
            s.devicesConnected == 2 && (s.streams.first { $0.name == "pstat/ei" }?.written ?? 0) > before + 20
        }
        let stop = try d.json(RunStopResult.self, ["run", "stop"])
        XCTAssertTrue(stop.streams.allSatisfy { $0.dropped == 0 })
        let devices = try d.json([DeviceInfo].self, ["devices"])
        XCTAssertEqual(devices.first { $0.name == "pstat" }?.reconnects, 1)

        let disk = try RunOnDisk(directory: run.directory)
        let events = disk.events.filter { $0.source == "pstat" }
        let gap = try XCTUnwrap(events.first { $0.kind == .gap })
        XCTAssertNotNil(gap.endTime)
        XCTAssertGreaterThan(gap.endTime!.nanoseconds, gap.hostTime.nanoseconds)
        XCTAssertTrue(events.contains { $0.kind == .stateChange && $0.message.hasPrefix("disconnected") })
        // Samples exist on both sides of the gap.
        let times = disk.stream("pstat/ei").map(\.header.hostTime)
        XCTAssertTrue(times.contains { $0 < gap.hostTime })
        XCTAssertTrue(times.contains { $0 > gap.endTime! })
        disk.assertContiguous("pstat/ei")
        XCTAssertEqual(d.terminate(), 0)
    }

    func testTCPDevice_servedByOperandoSim_recordsAndReconnectsAfterTheSimulatorRestarts() throws {
        var (sim, port) = try startSimulator("demo-potentiostat", port: 0)
        defer { if sim.isRunning { sim.terminate(); sim.waitUntilExit() } }
        let d = try DaemonProcess(config: Self.config(pstatTransport: "tcp:127.0.0.1:\(port)"))
        let run = try d.json(RunInfo.self, ["run", "start", "over-tcp"])
        try waitForData(d, streams: ["pstat/ei"])
        let devices = try d.json([DeviceInfo].self, ["devices"])
        XCTAssertEqual(devices.first { $0.name == "pstat" }?.transport, "tcp:127.0.0.1:\(port)")

        sim.terminate()
        sim.waitUntilExit()
        try d.waitForStatus("pstat disconnected") { $0.devicesConnected == 1 }
        (sim, port) = try startSimulator("demo-potentiostat", port: port)
        let before = try d.json(StatusResult.self, ["status"]).streams.first { $0.name == "pstat/ei" }!.written
        try d.waitForStatus("pstat reconnected over TCP") { s in
            s.devicesConnected == 2 && (s.streams.first { $0.name == "pstat/ei" }?.written ?? 0) > before + 20
        }
        let stop = try d.json(RunStopResult.self, ["run", "stop"])
        XCTAssertTrue(stop.streams.allSatisfy { $0.dropped == 0 && $0.written == $0.produced })
        let disk = try RunOnDisk(directory: run.directory)
        XCTAssertTrue(disk.events.contains { $0.kind == .gap && $0.source == "pstat" })
        XCTAssertEqual(d.terminate(), 0)
    }

    /// A pseudo-terminal (what `operando-sim --pty` and socat links give), which libserialport
    /// refuses, is opened with termios; the stage moves and its positions are recorded.
    func testZaberOverPseudoTerminal_servedByOperandoSim_opensWithTermiosAndMoves() throws {
        let dir = NSTemporaryDirectory() + "odpty-\(UUID().uuidString.prefix(8))"
        try FileSystem.makeDirectories(dir)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let link = dir + "/zaber0"
        let sim = Process()
        sim.executableURL = URL(fileURLWithPath: try Binaries.path("operando-sim"))
        sim.arguments = ["zaber", "--pty", link]
        sim.standardOutput = FileHandle.nullDevice
        sim.standardError = FileHandle.nullDevice
        try sim.run()
        defer { sim.terminate(); sim.waitUntilExit() }
        for _ in 0..<200 where !FileManager.default.fileExists(atPath: link) { ThreadSleep.sleep(.milliseconds(20)) }
        let d = try DaemonProcess(config: """
            [daemon]
            memory_budget_mb = 16
            ring_mb = 1
            [[device]]
            name = "stage"
            driver = "zaber-ascii"
            transport = "serial:\(link)"
            [device.settings]
            poll_hz = 20
            """)
        try d.client.waitForDevice("stage", "connected") { $0.state == "connected" }
        let run = try d.json(RunInfo.self, ["run", "start", "pty"])
        XCTAssertEqual(try d.ctl(["move", "stage", "--unit", "um", "1500"]).status, 0)
        try d.waitForStatus("positions") { ($0.streams.first { $0.name == "stage/position" }?.written ?? 0) > 20 }
        _ = try d.json(RunStopResult.self, ["run", "stop"])
        let disk = try RunOnDisk(directory: run.directory)
        XCTAssertTrue(d.logText().contains("with termios (a pseudo-terminal"), d.logText())
        XCTAssertTrue(disk.events.contains { $0.kind == .stimulus && $0.values["target_um"]?.doubleValue == 1500 })
        XCTAssertEqual(d.terminate(), 0)
    }

    func testCheckConfig_badFile_exitsTwoNamingFileLineAndKey() throws {
        let dir = NSTemporaryDirectory() + "odt-\(UUID().uuidString.prefix(8))"
        try FileSystem.makeDirectories(dir)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/bad.toml"
        try FileSystem.writeAtomically(path, bytes: Array(Self.config().replacingOccurrences(of: "ring_mb = 4", with: "ring_mb = 99999").utf8))
        let p = Process()
        p.executableURL = URL(fileURLWithPath: try Binaries.path("operandod"))
        p.arguments = ["--check-config", path]
        let err = Pipe()
        p.standardError = err
        p.standardOutput = FileHandle.nullDevice
        try p.run()
        let text = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 2)
        XCTAssertTrue(text.contains("\(path):3: daemon.ring_mb: 99999 is outside 1…16384"), text)
    }

    func testOperandoctl_whenDaemonIsAbsent_saysWhereItLookedAndExitsThree() throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: try Binaries.path("operandoctl"))
        p.arguments = ["status"]
        p.environment = ["OPERANDO_SOCKET": "/nonexistent/operando.sock"]
        let err = Pipe()
        p.standardError = err
        try p.run()
        let text = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 3)
        XCTAssertTrue(text.contains("/nonexistent/operando.sock"), text)
    }

    /// Testing level 4: Zaber's own client library (zaber-motion from PyPI) detects, homes, moves
    /// and reads the simulator over a pseudo-terminal, as it would a real chain.
    func testZaberMotion_officialClient_drivesTheZaberSimulator() throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/bash")
        p.arguments = [Binaries.packageRoot + "/scripts/zaber-motion-check.sh", Binaries.directory]
        let out = Pipe()
        p.standardOutput = out
        p.standardError = out
        try p.run()
        let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0, text)
    }

    func testSystemdUnit_verifiesWithNothingOnStderr() throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/bash")
        p.arguments = [Binaries.packageRoot + "/scripts/check-systemd.sh"]
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        let o = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        let e = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0, o + e)
        XCTAssertTrue(o.contains("verify OK"), o + e)
    }
}
