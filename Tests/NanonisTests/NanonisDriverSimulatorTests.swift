import NanonisDriver
import NanonisSimulator
import OperandoCore
import OperandoIO
import OperandoVirtualCell
import OperandoTestSupport
import XCTest

/// Level 2: the driver against the simulator (written apart from each other) over an in-memory
/// link. Scans are fast (5 ms passes) and run in real time; tests wait for conditions, never for
/// a duration.
final class NanonisDriverSimulatorTests: XCTestCase {
    private func lines(_ sink: CollectingSink, _ driver: NanonisDriver) -> [CollectingSink.Record] { sink.records(driver.lineStream) }
    private func frames(_ sink: CollectingSink, _ driver: NanonisDriver) -> [CollectingSink.Record] { sink.records(driver.frameStream) }

    func testSetup_identifiesConfiguresAndStartsTheScan() throws {
        let bench = SimulatorBench()
        let driver = try NanonisDriver(name: "afm", settings: fastSettings())
        let sink = CollectingSink(clock: bench.clock)
        let identity = try driver.setup(link: bench.host, sink: sink)
        XCTAssertEqual(identity.model, "Nanonis SPM controller")
        XCTAssertEqual(identity.serialNumber, "unknown")
        XCTAssertTrue(identity.firmware.contains("Generic 5") && identity.firmware.contains("13520"), identity.firmware)
        XCTAssertEqual(driver.signalNames.count, 128)
        let names = try XCTUnwrap(sink.events.first { $0.message.hasPrefix("scan channels") })
        XCTAssertEqual(names.values["signal_30"], .string("Z (m)"))
        XCTAssertTrue(names.message.contains("74 OC M1 Phase (deg)"), names.message)
        XCTAssertTrue(sink.events.contains { $0.message == "scan started (up)" })
        XCTAssertTrue(bench.simulator.scanState.running)
        XCTAssertFalse(sink.roundTrips.isEmpty, "every request/reply is a round trip of the link")
        XCTAssertEqual(driver.streams.map(\.name), ["afm/line", "afm/frame", "afm/signals"])
        XCTAssertEqual(driver.streams[0].shape, [7, 16])
        XCTAssertEqual(driver.streams[1].shape, [3, 2, 8, 16])
    }

    func testLines_arriveInScanOrderWithConsistentNumbers_andEachFrameWhenComplete() throws {
        let bench = SimulatorBench()
        let driver = try NanonisDriver(name: "afm", settings: fastSettings())
        let sink = CollectingSink(clock: bench.clock)
        _ = try driver.setup(link: bench.host, sink: sink)
        try acquire(driver, bench.host, sink) { frames(sink, driver).count >= 2 }
        let lineRecords = lines(sink, driver)
        XCTAssertGreaterThanOrEqual(lineRecords.count, 16)
        for (i, record) in lineRecords.prefix(16).enumerated() {
            let v = record.floats
            XCTAssertEqual(v.count, 7 * 16)
            XCTAssertEqual(v[0], Float(i % 8), "line number in scan order")
            XCTAssertEqual(v[1], Float(7 - i % 8), "scanning up starts at the last row")
            XCTAssertEqual(v[2], 1, "up")
            XCTAssertEqual(v[3], Float(i / 8), "frame number")
            XCTAssertTrue(v[16...].allSatisfy(\.isFinite), "line \(i) is complete")
            XCTAssertTrue(v[5..<16].allSatisfy(\.isNaN), "the rest of the header row is NaN")
            XCTAssertNil(record.deviceTime)
        }
        XCTAssertEqual(lineRecords.map(\.hostTime), lineRecords.map(\.hostTime).sorted(), "line starts in order")
        // Each line has a duration (its end = start + duration) and ends before the next begins.
        for (a, b) in zip(lineRecords, lineRecords.dropFirst()) {
            let end = Double(a.hostTime.nanoseconds) + Double(a.floats[4]) * 1e9
            XCTAssertGreaterThan(a.floats[4], 0, "line \(a.floats[0]) has a duration")
            XCTAssertLessThanOrEqual(end, Double(b.hostTime.nanoseconds) + 1_000, "line \(a.floats[0]) ends before the next starts")
        }
        // The first frame holds exactly the first 8 lines' data, channel by channel and direction.
        let frame = frames(sink, driver)[0]
        let f = frame.floats
        XCTAssertEqual(f.count, 3 * 2 * 8 * 16)
        XCTAssertTrue(f.allSatisfy(\.isFinite))
        XCTAssertEqual(frame.hostTime, lineRecords[0].hostTime, "a frame starts with its first line")
        for record in lineRecords.prefix(8) {
            let v = record.floats
            let row = Int(v[1])
            for c in 0..<3 {
                for d in 0..<2 {
                    XCTAssertEqual(Array(v[(1 + 2 * c + d) * 16..<(2 + 2 * c + d) * 16]), Array(f[((c * 2 + d) * 8 + row) * 16..<((c * 2 + d) * 8 + row + 1) * 16]))
                }
            }
        }
        // Z (m) in metres: an electrode surface of particles up to ~0.7 µm tall.
        let z = f[0..<(8 * 16)]
        XCTAssertLessThan(z.max()! - z.min()!, 2e-6)
        XCTAssertGreaterThan(z.max()! - z.min()!, 1e-9)
        XCTAssertTrue(sink.events.contains { $0.message.hasPrefix("frame 0 complete") })
        XCTAssertEqual(driver.linesLost, 0)
    }

    func testSignals_areReadAtTheirRateWithFieldsPerSignal() throws {
        let bench = SimulatorBench()
        let driver = try NanonisDriver(name: "afm", settings: fastSettings(["start_scan": .bool(false), "signals": .string("24,0,30,73")]))
        let sink = CollectingSink(clock: bench.clock)
        _ = try driver.setup(link: bench.host, sink: sink)
        let stream = try XCTUnwrap(driver.signalsStream)
        XCTAssertEqual(driver.streams[stream].fields.map(\.name), ["signal_24", "signal_0", "signal_30", "signal_73"])
        try acquire(driver, bench.host, sink) { sink.records(stream).count >= 5 }
        let samples = sink.records(stream)
        for s in samples {
            let v = s.doubles
            XCTAssertEqual(v.count, 4)
            XCTAssertEqual(v[0], 0.2, accuracy: 1e-6, "the bias")
            XCTAssertTrue(v[2].isFinite)
            XCTAssertEqual(v[3], 5e-9, accuracy: 2e-9, "the amplitude near its setpoint")
        }
        // 20 Hz: successive samples 50 ms apart on average (scheduling may stretch, never shrink).
        let span = samples.last!.hostTime.seconds(since: samples.first!.hostTime)
        XCTAssertGreaterThanOrEqual(span, 0.05 * Double(samples.count - 1) * 0.9)
        XCTAssertTrue(lines(sink, driver).isEmpty, "no scan was started")
    }

    /// Follow Me: the tip goes where it is sent (FolMe.XYPosSet in m, f64), is read back, and the
    /// move is a stimulus; out of the piezo range is the controller's error; without a target the
    /// position is only read.
    func testTip_movesIsReadBackAndRecorded_outOfRangeIsRefused() throws {
        let bench = SimulatorBench()
        let driver = try NanonisDriver(name: "afm", settings: fastSettings())
        let sink = CollectingSink(clock: bench.clock)
        _ = try driver.setup(link: bench.host, sink: sink)
        let moved = try driver.perform(DeviceCommand(device: "afm", name: "tip", arguments: ["x_nm": .number(120), "y_nm": .number(-45.5)]), link: bench.host, sink: sink)
        XCTAssertEqual(moved["x_nm"]?.doubleValue ?? 0, 120, accuracy: 1e-9)
        XCTAssertEqual(moved["y_nm"]?.doubleValue ?? 0, -45.5, accuracy: 1e-9)
        let event = try XCTUnwrap(sink.events.last { $0.kind == .stimulus })
        XCTAssertEqual(event.values["command"], .string("tip"))
        XCTAssertNotNil(event.uncertaintyNs)
        let events = sink.events.count
        let read = try driver.perform(DeviceCommand(device: "afm", name: "tip"), link: bench.host, sink: sink)
        XCTAssertEqual(read["x_nm"]?.doubleValue ?? 0, 120, accuracy: 1e-9)
        XCTAssertEqual(sink.events.count, events, "reading the position is no stimulus")
        XCTAssertThrowsError(try driver.perform(DeviceCommand(device: "afm", name: "tip", arguments: ["x_nm": .number(5e5), "y_nm": .number(0)]), link: bench.host, sink: sink)) {
            XCTAssertTrue("\($0)".contains("piezo range"), "\($0)")
        }
    }

    func testBiasAndSetpoint_areSetReadBackAndRecordedAsStimuli() throws {
        let bench = SimulatorBench()
        let driver = try NanonisDriver(name: "afm", settings: fastSettings())
        let sink = CollectingSink(clock: bench.clock)
        _ = try driver.setup(link: bench.host, sink: sink)
        let before = bench.clock.now()
        let result = try driver.perform(DeviceCommand(device: "afm", name: "bias", arguments: ["volts": .number(0.75)]), link: bench.host, sink: sink)
        let after = bench.clock.now()
        XCTAssertEqual(result["set_v"], .number(0.75))
        XCTAssertEqual(result["read_v"], .number(0.75))
        XCTAssertEqual(bench.simulator.currentBias, 0.75)
        let event = try XCTUnwrap(sink.events.last { $0.kind == .stimulus })
        XCTAssertEqual(event.values["command"], .string("bias"))
        XCTAssertEqual(event.values["read_v"], .number(0.75))
        XCTAssertTrue(event.hostTime >= before && event.hostTime <= after)
        XCTAssertNotNil(event.uncertaintyNs)
        XCTAssertNil(event.deviceTime)

        let sp = try driver.perform(DeviceCommand(device: "afm", name: "setpoint", arguments: ["value": .number(3e-9)]), link: bench.host, sink: sink)
        XCTAssertEqual(sp["read"]?.doubleValue ?? 0, 3e-9, accuracy: 1e-15)
        XCTAssertEqual(bench.simulator.currentSetpoint, 3e-9)
        XCTAssertEqual(sink.events.last?.values["command"], .string("setpoint"))

        XCTAssertThrowsError(try driver.perform(DeviceCommand(device: "afm", name: "bias", arguments: ["volts": .number(50)]), link: bench.host, sink: sink)) {
            XCTAssertEqual(($0 as? InstrumentError)?.code, .rejected)
        }
        XCTAssertThrowsError(try driver.perform(DeviceCommand(device: "afm", name: "approach"), link: bench.host, sink: sink)) {
            XCTAssertEqual(($0 as? InstrumentError)?.code, .unsupported)
        }
        // The link is still in step after the refusals.
        try acquire(driver, bench.host, sink) { lines(sink, driver).count >= 2 }
    }

    func testScanCommands_stopRecordsThePartialFrame_andStartDownScansRowsDownwards() throws {
        let bench = SimulatorBench()
        let driver = try NanonisDriver(name: "afm", settings: fastSettings(["lines": .integer(32)]))
        let sink = CollectingSink(clock: bench.clock)
        _ = try driver.setup(link: bench.host, sink: sink)
        try acquire(driver, bench.host, sink) { lines(sink, driver).count >= 3 }
        let stop = try driver.perform(DeviceCommand(device: "afm", name: "scan", arguments: ["action": .string("stop")]), link: bench.host, sink: sink)
        XCTAssertEqual(stop["action"], .string("stop"))
        XCTAssertFalse(bench.simulator.scanState.running)
        let partial = try XCTUnwrap(frames(sink, driver).first).floats
        let recorded = lines(sink, driver).count
        // Scanning up from the last row: the rows recorded are finite, the top rows still NaN.
        XCTAssertTrue(partial[(31 * 16)..<(32 * 16)].allSatisfy(\.isFinite))
        XCTAssertTrue(partial[0..<16].allSatisfy(\.isNaN))
        XCTAssertTrue(sink.events.contains { $0.message.contains("the scan was stopped at line") })

        _ = try driver.perform(DeviceCommand(device: "afm", name: "scan", arguments: ["action": .string("start"), "direction": .string("down")]), link: bench.host, sink: sink)
        try acquire(driver, bench.host, sink) { lines(sink, driver).count >= recorded + 3 }
        let down = lines(sink, driver)[recorded...].map(\.floats)
        XCTAssertEqual(down.map { $0[0] }.prefix(3), [0, 1, 2])
        XCTAssertEqual(down.map { $0[1] }.prefix(3), [0, 1, 2], "scanning down starts at row 0")
        XCTAssertEqual(down[0][2], 0)
        _ = try driver.perform(DeviceCommand(device: "afm", name: "scan", arguments: ["action": .string("pause")]), link: bench.host, sink: sink)
        _ = try driver.perform(DeviceCommand(device: "afm", name: "scan", arguments: ["action": .string("resume")]), link: bench.host, sink: sink)
        let stimuli = sink.events.filter { $0.kind == .stimulus }.compactMap { $0.values["action"] }
        XCTAssertEqual(stimuli, [.string("stop"), .string("start"), .string("pause"), .string("resume")])
        XCTAssertThrowsError(try driver.perform(DeviceCommand(device: "afm", name: "scan", arguments: ["action": .string("explode")]), link: bench.host, sink: sink))
    }

    func testSingleFrameScan_endsWithAFrameAndAnEndEvent() throws {
        let bench = SimulatorBench()
        let driver = try NanonisDriver(name: "afm", settings: fastSettings(["start_scan": .bool(false)]))
        let sink = CollectingSink(clock: bench.clock)
        _ = try driver.setup(link: bench.host, sink: sink)
        // Continuous scan off at the controller (the driver leaves the scan properties alone).
        var body = NanonisBodyWriter()
        body.uint32(2); body.uint32(0); body.uint32(0); body.string(""); body.string(""); body.stringArray([]); body.uint32(0)
        _ = try bench.simulator.receive(NanonisProtocol.request("Scan.PropsSet", body: body.bytes))
        _ = try driver.perform(DeviceCommand(device: "afm", name: "scan", arguments: ["action": .string("start")]), link: bench.host, sink: sink)
        try acquire(driver, bench.host, sink) { sink.events.contains { $0.message == "the scan ended" } }
        XCTAssertEqual(frames(sink, driver).count, 1)
        XCTAssertEqual(lines(sink, driver).count, 8)
        XCTAssertTrue(sink.events.contains { $0.message.hasPrefix("frame 0 complete") })
    }

    func testRepliesDripFedOneByteAtATime_decodeTheSame() throws {
        let bench = SimulatorBench(dripFed: true)
        // One channel, no signals and 50 ms passes: a byte per read makes each grab slow, and the
        // driver must ask for the end of a frame's last line before it comes.
        let driver = try NanonisDriver(name: "afm", settings: fastSettings(["speed_nm_per_s": .number(100_000), "channels": .string("30"), "signals": .string("")]))
        let sink = CollectingSink(clock: bench.clock)
        _ = try driver.setup(link: bench.host, sink: sink)
        try acquire(driver, bench.host, sink) { frames(sink, driver).count >= 1 }
        XCTAssertTrue(frames(sink, driver)[0].floats.allSatisfy(\.isFinite), "\(sink.events.map(\.message))")
    }

    func testFrameEndMissedWhileBusy_recoversTheLastLinesFromTheBuffer() throws {
        let bench = SimulatorBench()
        let driver = try NanonisDriver(name: "afm", settings: fastSettings(["signals": .string("")]))
        let sink = CollectingSink(clock: bench.clock)
        _ = try driver.setup(link: bench.host, sink: sink)
        try acquire(driver, bench.host, sink) { lines(sink, driver).count >= 5 }
        // The driver is busy elsewhere (no acquire) while the controller ends the frame and scans
        // the next frame's first lines: their end-of-line reports are never asked for.
        var waits = 0
        while !(bench.simulator.scanState.framesEnded >= 1 && (bench.simulator.scanState.line ?? 0) >= 2) && waits < 100_000 {
            ThreadSleep.sleep(.milliseconds(1))
            waits += 1
        }
        let recorded = lines(sink, driver).count
        try acquire(driver, bench.host, sink) { frames(sink, driver).count >= 1 && lines(sink, driver).count >= recorded + 4 }
        let numbers = lines(sink, driver).map { ($0.floats[3], $0.floats[0]) }
        XCTAssertEqual(numbers.prefix(8).map(\.0), Array(repeating: 0, count: 8), "frame 0: \(numbers)")
        XCTAssertEqual(numbers.prefix(8).map(\.1), (0..<8).map(Float.init), "all 8 lines of frame 0, in order")
        XCTAssertEqual(numbers[8].0, 1)
        XCTAssertTrue(frames(sink, driver)[0].floats.allSatisfy(\.isFinite), "frame 0 is whole")
        XCTAssertEqual(driver.linesLost, 0)
        XCTAssertTrue(sink.events.contains { $0.message.hasPrefix("the controller started a new frame") }, "\(sink.events.map(\.message))")
        XCTAssertFalse(sink.events.contains { $0.kind == .alarm }, "\(sink.events.map(\.message))")
    }

    func testControllerThatStopsAnswering_timesOutWithAClearError() throws {
        let bench = SimulatorBench()
        let driver = try NanonisDriver(name: "afm", settings: fastSettings(["reply_timeout_ms": .integer(200)]))
        let sink = CollectingSink(clock: bench.clock)
        _ = try driver.setup(link: bench.host, sink: sink)
        bench.simulator.setSilent(true)
        XCTAssertThrowsError(try acquire(driver, bench.host, sink) { false }) { error in
            XCTAssertEqual((error as? InstrumentError)?.code, .replyTimedOut)
            XCTAssertTrue("\(error)".contains("TCP interface"), "\(error)")
        }
    }

    func testSilentLink_setupTimesOut() throws {
        let link = InMemoryLink(clock: MonotonicRawClock())
        let driver = try NanonisDriver(name: "afm", settings: fastSettings(["reply_timeout_ms": .integer(100)]))
        XCTAssertThrowsError(try driver.setup(link: .byteStream(link.hostByteStream), sink: CollectingSink(clock: MonotonicRawClock()))) {
            XCTAssertEqual(($0 as? InstrumentError)?.code, .replyTimedOut)
        }
    }

    func testUnplugMidScan_throwsDisconnected_thenAFreshSetupFollowsTheRunningScan() throws {
        let bench = SimulatorBench()
        let driver = try NanonisDriver(name: "afm", settings: fastSettings())
        let sink = CollectingSink(clock: bench.clock)
        _ = try driver.setup(link: bench.host, sink: sink)
        try acquire(driver, bench.host, sink) { lines(sink, driver).count >= 3 }
        bench.unplug()
        XCTAssertThrowsError(try acquire(driver, bench.host, sink) { false }) {
            XCTAssertEqual(($0 as? InstrumentError)?.code, .disconnected)
        }
        // The device runner reconnects and replays setup; the controller kept scanning meanwhile.
        bench.replug()
        XCTAssertTrue(bench.simulator.scanState.running)
        let before = lines(sink, driver).count
        _ = try driver.setup(link: bench.host, sink: sink)
        XCTAssertTrue(sink.events.contains { $0.message.hasPrefix("following the scan in progress") })
        try acquire(driver, bench.host, sink) { frames(sink, driver).count >= 2 }
        let after = lines(sink, driver)[before...].map(\.floats)
        XCTAssertFalse(after.isEmpty)
        // Line numbers within each frame keep counting up by one, and each frame is complete.
        for (a, b) in zip(after, after.dropFirst()) where b[3] == a[3] { XCTAssertEqual(b[0], a[0] + 1) }
        XCTAssertTrue(frames(sink, driver).last!.floats.allSatisfy(\.isFinite))
    }

    func testReconnectWithADifferentConfiguration_stopsReconfiguresAndRestarts() throws {
        let bench = SimulatorBench()
        let first = try NanonisDriver(name: "afm", settings: fastSettings())
        let sink = CollectingSink(clock: bench.clock)
        _ = try first.setup(link: bench.host, sink: sink)
        let second = try NanonisDriver(name: "afm", settings: fastSettings(["pixels": .integer(32), "channels": .string("30")]))
        _ = try second.setup(link: bench.host, sink: sink)
        XCTAssertTrue(sink.events.contains { $0.message == "stopped the scan in progress to configure it" })
        try acquire(second, bench.host, sink) { sink.records(second.lineStream).count >= 1 }
        XCTAssertEqual(sink.records(second.lineStream).last?.floats.count, 3 * 32)
    }

    func testReplyToAnotherCommand_isAProtocolViolation() throws {
        let clock = MonotonicRawClock()
        let link = InMemoryLink(clock: clock)
        let device = link.deviceByteStream
        // A scripted controller: answers the first request as if it were another command.
        let thread = IOThread(name: "nanonis-fake") {
            var buffer = [UInt8](repeating: 0, count: 4096)
            var got = 0
            while got < 40, let n = try? buffer.withUnsafeMutableBytes({ try device.read(into: $0, timeout: .milliseconds(100)) }).count { got += n }
            let reply = nameField("Bias.Get") + hexBytes("0000 000C 0000 0000 3F00 0000 0000 0000 0000 0000")
            try? reply.withUnsafeBytes { try device.write($0, timeout: .seconds(1)) }
        }
        defer { thread.join() }
        let driver = try NanonisDriver(name: "afm", settings: fastSettings())
        XCTAssertThrowsError(try driver.setup(link: .byteStream(link.hostByteStream), sink: CollectingSink(clock: clock))) { error in
            XCTAssertEqual((error as? InstrumentError)?.code, .protocolViolation)
            XCTAssertTrue("\(error)".contains("a reply to Bias.Get came while waiting for the reply to Util.VersionGet"), "\(error)")
        }
    }

    func testSettings_areValidatedWithTheKeyAndReason() {
        func refusal(_ values: [String: EventValue]) -> String {
            do {
                _ = try NanonisDriver(name: "afm", settings: DeviceSettings(values))
                return "accepted"
            } catch {
                XCTAssertEqual((error as? InstrumentError)?.code, .unsupported)
                return "\(error)"
            }
        }
        XCTAssertTrue(refusal(["pixels": .integer(24)]).contains("pixels = 24: must be a multiple of 16"))
        XCTAssertTrue(refusal(["pixels": .number(64.5)]).contains("pixels = 64.5: not a whole number"))
        XCTAssertTrue(refusal(["channels": .string("30,200")]).contains("\"200\" is not a signal index"))
        XCTAssertTrue(refusal(["channels": .string("30,30")]).contains("listed twice"))
        XCTAssertTrue(refusal(["channels": .string("")]).contains("at least one"))
        XCTAssertTrue(refusal(["speed_nm_per_s": .number(0)]).contains("speed_nm_per_s = 0.0"))
        XCTAssertTrue(refusal(["start_scan": .string("yes")]).contains("start_scan = yes: not true or false"))
        XCTAssertTrue(refusal(["frame_size": .number(5)]).contains("frame_size = 5.0: unknown setting"))
        XCTAssertTrue(refusal(["pixels": .integer(4096), "lines": .integer(4096), "channels": .string("0,1,2")]).contains("MiB frames"))
        XCTAssertEqual(refusal(["signals": .string(""), "channels": .integer(30)]), "accepted")
        XCTAssertNil(try? NanonisDriver(name: "afm", settings: DeviceSettings(["signals_hz": .number(0)])).signalsStream)
    }
}
