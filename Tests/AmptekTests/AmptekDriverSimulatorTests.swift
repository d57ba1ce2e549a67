import AmptekDriver
import AmptekSimulator
import OperandoCore
import OperandoIO
import OperandoVirtualCell
import OperandoTestSupport
import XCTest

/// Level 2: the driver against the simulator (written apart from each other) over an in-memory
/// link, as USB packets and as an RS-232 byte stream. Time comes from a manual clock that the
/// test moves one poll period at a time.
final class AmptekDriverSimulatorTests: XCTestCase {
    // MARK: Settings

    func testSettings_invalidValuesAreRefusedWithWhatIsAllowed() {
        func message(_ values: [String: EventValue]) -> String {
            do {
                _ = try AmptekDriver(name: "xrf", settings: DeviceSettings(values))
                return "accepted"
            } catch { return "\(error)" }
        }
        XCTAssertTrue(message(["channels": .integer(1000)]).contains("256, 512, 1024, 2048, 4096 or 8192"))
        XCTAssertTrue(message(["poll_ms": .integer(10)]).contains("50…60000"))
        XCTAssertTrue(message(["preset_s": .number(-1)]).contains("0…99999999.9"))
        XCTAssertTrue(message(["preset_s": .number(1.25)]).contains("0.1 s"))
        XCTAssertTrue(message(["gain": .number(1000)]).contains("0.75…500"))
        XCTAssertTrue(message(["config": .string("MCAC=512;")]).contains("channels setting owns"))
        XCTAssertTrue(message(["config": .string("PRET=1;")]).contains("preset_s"))
        XCTAssertTrue(message(["config": .string("THRESHOLD=1;")]).contains("not a DP5 command"))
        XCTAssertTrue(message(["clear_on_start": .string("yes")]).contains("true or false"))
        XCTAssertTrue(message(["chanels": .integer(1024)]).contains("unknown setting \"chanels\""))
        XCTAssertEqual(message([:]), "accepted")
    }

    func testSettings_defaultsAndTheConfigurationSent() throws {
        let d = try AmptekDriver(name: "xrf", settings: DeviceSettings())
        XCTAssertEqual(d.settings, AmptekSettings())
        XCTAssertEqual(d.settings.channels, 2048)
        XCTAssertEqual(d.settings.pollMilliseconds, 1000)
        XCTAssertTrue(d.settings.clearOnStart)
        XCTAssertEqual(d.settings.configurationText, "MCAC=2048;PRET=OFF;")
        let e = try AmptekDriver(name: "xrf", settings: settings(["gain": .number(20), "preset_s": .integer(10), "config": .string("tpea=3.2;RESC=Y;CLCK=80;")]))
        XCTAssertEqual(e.settings.configurationText, "RESC=Y;MCAC=1024;TPEA=3.2;CLCK=80;GAIN=20.000;PRET=10.0;")
        XCTAssertEqual(e.streams.map(\.name), ["xrf/spectrum", "xrf/status"])
        XCTAssertEqual(e.streams[0].shape, [1024])
        XCTAssertEqual(e.streams[0].elementType, .uint32)
        XCTAssertEqual(e.streams[0].kind, .frames)
        XCTAssertEqual(e.streams[1].fields.map(\.name), AmptekDriver.statusFields.map(\.name))
        XCTAssertEqual(e.streams[1].kind, .samples)
        XCTAssertEqual(AmptekDriver.serialDefaults.baudRate, 115_200)
        XCTAssertEqual(AmptekDriver.serialDefaults.description, "115200 8N1 flow=none")
        XCTAssertEqual(AmptekDriver.linkKind, .packets)
        XCTAssertTrue(AmptekDriver.acceptsByteStream)
        XCTAssertEqual(AmptekDriver.clockResolutionNs, 1_000_000)
    }

    // MARK: Setup

    func testSetup_identifiesConfiguresReadsBackAndStarts() throws {
        let bench = SimulatorBench()
        let driver = try AmptekDriver(name: "xrf", settings: settings(["gain": .number(20), "preset_s": .number(30), "config": .string("THSL=1.5;TPEA=3.2;")]))
        let sink = CollectingSink(clock: bench.clock)
        let id = try driver.setup(link: bench.host, sink: sink)
        XCTAssertEqual(id.model, "Amptek DP5 + PC5 (X-123SDD)")
        XCTAssertEqual(id.serialNumber, "31415")
        XCTAssertEqual(id.firmware, "FW 6.08.00, FPGA 6.12")
        XCTAssertEqual(bench.simulator.setting("MCAC"), "1024")
        XCTAssertEqual(bench.simulator.setting("GAIN"), "20.000")
        XCTAssertEqual(bench.simulator.setting("PRET"), "30.0")
        XCTAssertEqual(bench.simulator.setting("THSL"), "1.500")
        XCTAssertEqual(bench.simulator.setting("TPEA"), "3.200")
        XCTAssertEqual(driver.configuration, ["MCAC": "1024", "THSL": "1.500", "TPEA": "3.200", "GAIN": "20.000", "PRET": "30.0"])
        let config = try XCTUnwrap(sink.events(containing: "configuration read back").first)
        XCTAssertEqual(config.message, "configuration read back: MCAC=1024;THSL=1.500;TPEA=3.200;GAIN=20.000;PRET=30.0;")
        XCTAssertEqual(config.values["GAIN"], .string("20.000"))
        let started = try XCTUnwrap(sink.events(containing: "acquisition started").first)
        XCTAssertEqual(started.values["channels"], .integer(1024))
        XCTAssertEqual(started.values["poll_ms"], .integer(200))
        XCTAssertEqual(started.values["preset_s"], .number(30))
        XCTAssertTrue(bench.simulator.snapshot.mcaEnabled)
    }

    func testSetup_aValueTheDeviceRefuses_throwsWithTheAckAndTheEchoedCommand() throws {
        let bench = SimulatorBench()
        let driver = try AmptekDriver(name: "xrf", settings: settings(["config": .string("THSL=1.5;FOOO=3;")]))
        let sink = CollectingSink(clock: bench.clock)
        XCTAssertThrowsError(try driver.setup(link: bench.host, sink: sink)) { error in
            let e = error as? InstrumentError
            XCTAssertEqual(e?.code, .rejected)
            XCTAssertTrue(e?.detail.contains("ACK 07 unrecognized command") == true, "\(error)")
            XCTAssertTrue(e?.detail.contains("\"FOOO=3;\"") == true, "\(error)")
        }
        let gain = try AmptekDriver(name: "xrf", settings: settings(["gain": .number(300)]))
        XCTAssertThrowsError(try gain.setup(link: bench.host, sink: sink)) { error in
            XCTAssertTrue("\(error)".contains("ACK 05 bad parameter") && "\(error)".contains("GAIN=300.000;"), "\(error)")
        }
    }

    func testSetup_whenAnotherInterfaceHoldsTheDetector_saysSo() throws {
        let bench = SimulatorBench()
        bench.simulator.busy = true
        let driver = try AmptekDriver(name: "xrf", settings: settings())
        XCTAssertThrowsError(try driver.setup(link: bench.host, sink: CollectingSink(clock: bench.clock))) { error in
            XCTAssertEqual((error as? InstrumentError)?.code, .rejected)
            XCTAssertTrue("\(error)".contains("another interface"), "\(error)")
        }
    }

    func testSetup_whenNothingAnswers_timesOutNamingTheRequest() throws {
        let bench = SimulatorBench()
        bench.silence()
        let driver = try AmptekDriver(name: "xrf", settings: settings())
        XCTAssertThrowsError(try driver.setup(link: bench.host, sink: CollectingSink(clock: bench.clock))) { error in
            XCTAssertEqual((error as? InstrumentError)?.code, .replyTimedOut)
            XCTAssertTrue("\(error)".contains("no reply to status (01 01)"), "\(error)")
        }
    }

    // MARK: Acquisition

    private func checkAcquisition(_ mode: SimulatorBench.Mode, channels: Int, file: StaticString = #filePath, line: UInt = #line) throws {
        let bench = SimulatorBench(mode: mode)
        let driver = try AmptekDriver(name: "xrf", settings: settings(["channels": .integer(Int64(channels))]))
        let sink = CollectingSink(clock: bench.clock)
        _ = try driver.setup(link: bench.host, sink: sink)
        let expected = bench.simulator.snapshot
        try pump(driver, bench, sink) { sink.frames.count >= 6 }
        let frames = sink.frames
        let statuses = sink.statuses
        XCTAssertEqual(frames.count, statuses.count, file: file, line: line)
        var total = 0.0
        var previousDevice: Int64 = 0
        for (f, s) in zip(frames, statuses) {
            let counts = f.uint32s
            let v = s.doubles
            XCTAssertEqual(counts.count, channels, file: file, line: line)
            XCTAssertEqual(v.count, AmptekDriver.statusFields.count, file: file, line: line)
            // The status counted exactly what the spectrum holds.
            XCTAssertEqual(Double(counts.reduce(0) { $0 + UInt64($1) }), v[1], file: file, line: line)
            XCTAssertGreaterThanOrEqual(v[0], v[1], "fast ≥ slow", file: file, line: line)
            XCTAssertEqual(v[5], 0.2, accuracy: 0.0015, "each frame is one 200 ms interval", file: file, line: line)
            XCTAssertLessThan(v[4], v[5], "accumulation (live) time is below real time", file: file, line: line)
            XCTAssertEqual(v[3], 100 * (1 - v[1] / v[0]), accuracy: 1e-9, file: file, line: line)
            XCTAssertEqual(v[9], 220, accuracy: 1, "detector temperature, K", file: file, line: line)
            XCTAssertEqual(v[10], 30, accuracy: 3, "board temperature, °C", file: file, line: line)
            XCTAssertEqual(v[11], -260, accuracy: 0.5, "bias, V", file: file, line: line)
            XCTAssertEqual(v[12], 1, file: file, line: line)
            XCTAssertEqual(v[13], 0, file: file, line: line)
            XCTAssertEqual(f.deviceTime, s.deviceTime, file: file, line: line)
            XCTAssertEqual(f.hostTime, s.hostTime, file: file, line: line)
            let device = try XCTUnwrap(f.deviceTime, file: file, line: line)
            XCTAssertEqual(Double(device - previousDevice), 200e6, accuracy: 1.5e6, "device time advances by the interval's real time", file: file, line: line)
            XCTAssertEqual(v[6] * 1e9, Double(device), accuracy: 1, file: file, line: line)
            previousDevice = device
            total += v[1]
        }
        // Counts near what the simulator's model expects for the time acquired.
        let expectedTotal = expected.outputRateCps * Double(previousDevice) / 1e9
        XCTAssertEqual(total, expectedTotal, accuracy: 6 * expectedTotal.squareRoot() + 0.01 * expectedTotal, file: file, line: line)
        // One bracketed clock observation per frame, in order, each bracket the right way round.
        let exchanges = sink.exchanges
        XCTAssertEqual(exchanges.count, frames.count, file: file, line: line)
        XCTAssertEqual(exchanges.map(\.deviceTime), frames.compactMap(\.deviceTime), file: file, line: line)
        XCTAssertEqual(exchanges.map(\.deviceTime), exchanges.map(\.deviceTime).sorted(), file: file, line: line)
        XCTAssertEqual(Set(exchanges.map(\.deviceTime)).count, exchanges.count, "strictly increasing", file: file, line: line)
        for e in exchanges { XCTAssertLessThanOrEqual(e.hostBefore, e.hostAfter, file: file, line: line) }
        XCTAssertTrue(sink.events(containing: "skipped").isEmpty, "\(sink.events.map(\.message))", file: file, line: line)
        XCTAssertEqual(driver.discardedBytes, 0, file: file, line: line)
    }

    func testAcquire_overPackets_pushesSpectraAndStatusOnTheDeviceClock() throws {
        try checkAcquisition(.packets, channels: 1024)
    }

    func testAcquire_overAByteStream_sameResult() throws {
        try checkAcquisition(.byteStream, channels: 2048)
    }

    func testAcquire_overAByteStreamReadOneByteAtATime_sameResult() throws {
        try checkAcquisition(.dripFed, channels: 256)
    }

    func testAcquire_8192Channels_overPackets() throws {
        try checkAcquisition(.packets, channels: 8192)
    }

    func testPresetTime_stopsTheAcquisitionOnce_andTheStatusIsStillWatched() throws {
        let bench = SimulatorBench()
        let driver = try AmptekDriver(name: "xrf", settings: settings(["preset_s": .number(0.5)]))
        let sink = CollectingSink(clock: bench.clock)
        _ = try driver.setup(link: bench.host, sink: sink)
        try pump(driver, bench, sink) { !sink.events(containing: "acquisition stopped").isEmpty }
        let framesAtStop = sink.frames.count
        XCTAssertEqual(framesAtStop, 3, "0.5 s of live time needs a little over 0.5 s: the third 200 ms frame")
        let statusesAtStop = sink.statuses.count
        try pump(driver, bench, sink) { sink.statuses.count >= statusesAtStop + 4 }
        XCTAssertEqual(sink.frames.count, framesAtStop, "no spectra once the MCA stopped")
        let stopped = sink.events(containing: "acquisition stopped")
        XCTAssertEqual(stopped.count, 1)
        XCTAssertEqual(stopped.first?.message.hasPrefix("acquisition stopped: preset time reached"), true)
        XCTAssertEqual(stopped.first?.values["accumulation_s"]?.doubleValue ?? 0, 0.5, accuracy: 0.01, "the total, not one interval's")
        XCTAssertEqual(bench.simulator.setting("PRET"), "0.1", "the device's PRET was lowered for the last interval")
        let last = sink.statuses.last!
        XCTAssertNil(last.deviceTime, "a stopped MCA's clock does not run")
        XCTAssertEqual(last.doubles[12], 0, "MCA disabled")
        let finalFrame = sink.statuses[statusesAtStop - 1].doubles
        XCTAssertEqual(finalFrame[13], 1, "preset reached in the last frame")
        XCTAssertEqual(sink.exchanges.count, framesAtStop - 1, "no clock observation from a frame whose clock stopped early")
        // `enable` starts again from zero.
        _ = try driver.perform(DeviceCommand(device: "xrf", name: "enable"), link: bench.host, sink: sink)
        try pump(driver, bench, sink) { sink.frames.count >= framesAtStop + 2 }
        XCTAssertLessThan(sink.frames.last!.deviceTime!, sink.frames[framesAtStop - 1].deviceTime!, "a new acquisition: the device time restarts")
    }

    func testSpectrum_followsTheCellsStateOfCharge() throws {
        func nickel(_ soc: Double) throws -> Double {
            let bench = SimulatorBench(stateOfCharge: soc)
            let driver = try AmptekDriver(name: "xrf", settings: settings(["channels": .integer(2048), "poll_ms": .integer(1000)]))
            let sink = CollectingSink(clock: bench.clock)
            _ = try driver.setup(link: bench.host, sink: sink)
            try pump(driver, bench, sink) { sink.frames.count >= 4 }
            // 10 eV per channel at the default gain: Ni Kα (7.478 keV) ± 80 eV.
            let sum = sink.frames.map { f in f.uint32s[740..<756].reduce(0.0) { $0 + Double($1) } }.reduce(0, +)
            XCTAssertEqual(bench.simulator.channelEnergyKeV(747), 7.475, accuracy: 1e-9)
            return sum
        }
        let low = try nickel(0.1)
        let high = try nickel(0.9)
        XCTAssertGreaterThan(high, 1.6 * low, "the Ni Kα line grows as the cell charges (\(low) → \(high) counts)")
    }

    // MARK: Faults

    func testSilentDetector_makesAcquireThrowOnceTheSilenceLimitPasses() throws {
        let bench = SimulatorBench()
        let driver = try AmptekDriver(name: "xrf", settings: settings(["channels": .integer(256), "poll_ms": .integer(100)]))
        let sink = CollectingSink(clock: bench.clock)
        _ = try driver.setup(link: bench.host, sink: sink)
        try pump(driver, bench, sink) { sink.frames.count >= 2 }
        let lastReply = sink.frames.last!.hostTime
        XCTAssertEqual(driver.silenceLimitNs, 3 * 100_000_000 + 1_000_000_000)
        bench.silence()
        var thrown: InstrumentError?
        for _ in 0..<200 where thrown == nil {
            bench.clock.advance(seconds: 0.05)
            do {
                try driver.acquire(link: bench.host, sink: sink, budget: .milliseconds(2))
            } catch let e as InstrumentError {
                thrown = e
            }
        }
        let e = try XCTUnwrap(thrown)
        XCTAssertEqual(e.code, .replyTimedOut)
        XCTAssertTrue(e.detail.contains("stopped answering"), e.detail)
        let silent = bench.clock.now().nanoseconds - lastReply.nanoseconds
        XCTAssertGreaterThan(silent, driver.silenceLimitNs, "not before the limit")
        XCTAssertLessThanOrEqual(silent, driver.silenceLimitNs + 100_000_000, "within a step or two after it")
    }

    func testLostReply_isRecordedAndAskedAgain() throws {
        let bench = SimulatorBench()
        let driver = try AmptekDriver(name: "xrf", settings: settings(["channels": .integer(256), "poll_ms": .integer(100)]))
        let sink = CollectingSink(clock: bench.clock)
        _ = try driver.setup(link: bench.host, sink: sink)
        try pump(driver, bench, sink) { sink.frames.count >= 8 }
        XCTAssertEqual(driver.pollTimeoutNs, 250_000_000)
        let framesBefore = sink.frames.count
        let deviceBefore = sink.frames.last!.deviceTime!
        // The next reply is lost, and the start of a packet whose rest never comes arrives.
        bench.simulator.loseReplies(1)
        try bench.inject(Array(AmptekPacket.encode(AmptekPacketID(0x81, 0x02), data: [UInt8](repeating: 1, count: 832)).prefix(100)))
        try pump(driver, bench, sink, step: 0.05) { !sink.events(containing: "asking again").isEmpty }
        let incomplete = try XCTUnwrap(sink.events(containing: "incomplete packet 81 02 (100 of 840 bytes)").first, "\(sink.events.map(\.message))")
        XCTAssertEqual(incomplete.kind, .alarm)
        let lost = try XCTUnwrap(sink.events(containing: "asking again").first)
        XCTAssertTrue(lost.message.contains("counts of that interval are lost"), lost.message)
        try pump(driver, bench, sink) { sink.frames.count >= framesBefore + 3 }
        XCTAssertLessThan(sink.frames[framesBefore].deviceTime!, deviceBefore, "a new device-time epoch after the gap")
        XCTAssertTrue(sink.events(containing: "went back").isEmpty, "a lost reply is not a reset")
    }

    private func checkCorruption(_ mode: SimulatorBench.Mode) throws {
        let bench = SimulatorBench(mode: mode)
        let driver = try AmptekDriver(name: "xrf", settings: settings(["channels": .integer(512)]))
        let sink = CollectingSink(clock: bench.clock)
        _ = try driver.setup(link: bench.host, sink: sink)
        try pump(driver, bench, sink) { sink.frames.count >= 2 }
        var corrupt = AmptekPacket.encode(.status, data: [UInt8](repeating: 7, count: 64))
        corrupt[30] ^= 0xFF
        try bench.inject(hex("13 37 00") + corrupt)
        let before = sink.frames.count
        try pump(driver, bench, sink) { sink.frames.count >= before + 3 }
        let alarms = sink.events(containing: "skipped")
        XCTAssertEqual(alarms.count, 1, "\(sink.events.map(\.message))")
        XCTAssertEqual(alarms.first?.kind, .alarm)
        XCTAssertEqual(alarms.first?.values["bytes"], .integer(Int64(3 + corrupt.count)))
        XCTAssertTrue(alarms.first?.message.contains("without the sync pattern") == true, alarms.first?.message ?? "")
        XCTAssertEqual(driver.discardedBytes, 3 + corrupt.count)
        for f in sink.frames { XCTAssertEqual(f.uint32s.count, 512) }
    }

    func testCorruptedPacket_isReportedAndAcquisitionContinues_overPackets() throws {
        try checkCorruption(.packets)
    }

    func testCorruptedPacket_isReportedAndAcquisitionContinues_overAByteStream() throws {
        try checkCorruption(.byteStream)
    }

    func testBadChecksumReply_isNamedInTheEvent() throws {
        let bench = SimulatorBench()
        let driver = try AmptekDriver(name: "xrf", settings: settings(["channels": .integer(256)]))
        let sink = CollectingSink(clock: bench.clock)
        _ = try driver.setup(link: bench.host, sink: sink)
        try pump(driver, bench, sink) { sink.frames.count >= 1 }
        var bad = AmptekPacket.encode(.ackOK)
        bad[7] ^= 1
        try bench.inject(bad)
        let before = sink.frames.count
        try pump(driver, bench, sink) { sink.frames.count >= before + 2 }
        let alarm = try XCTUnwrap(sink.events(containing: "failed its checksum").first)
        XCTAssertTrue(alarm.message.contains("packet FF 00 with 0 data bytes"), alarm.message)
        XCTAssertTrue(alarm.message.contains("received 0xFD13, computed 0xFD12"), alarm.message)
    }

    func testDetectorReset_isRecorded_configurationReplayed_andTheDeviceTimeRestarts() throws {
        let bench = SimulatorBench()
        let driver = try AmptekDriver(name: "xrf", settings: settings(["channels": .integer(512), "config": .string("THSL=2.0;")]))
        let sink = CollectingSink(clock: bench.clock)
        _ = try driver.setup(link: bench.host, sink: sink)
        try pump(driver, bench, sink) { sink.frames.count >= 4 }
        let before = sink.frames.count
        let deviceBefore = sink.frames.last!.deviceTime!
        // Settings sent with 20 02 are in flash; pretend someone changed the active one since.
        bench.simulator.powerCycle()
        try pump(driver, bench, sink) { sink.frames.count >= before + 3 }
        let reset = sink.events(containing: "detector reset:")
        XCTAssertEqual(reset.count, 1, "\(sink.events.map(\.message))")
        XCTAssertEqual(reset.first?.kind, .alarm)
        XCTAssertTrue(reset.first?.message.contains("rebooted") == true)
        XCTAssertEqual(sink.events(containing: "acquisition started (after a detector reset)").count, 1)
        XCTAssertLessThan(sink.frames[before].deviceTime!, deviceBefore, "the device time restarts: the clock model sees a reset")
        XCTAssertTrue(bench.simulator.snapshot.mcaEnabled)
        XCTAssertEqual(bench.simulator.setting("THSL"), "2.000")
    }

    /// Something else cleared the MCA between two frames: the interval's real time is shorter
    /// than the time between the readings, which the driver reports as the clock going back.
    func testRealTimeGoingBackwards_isRecorded() throws {
        let bench = SimulatorBench()
        let driver = try AmptekDriver(name: "xrf", settings: settings(["channels": .integer(256), "poll_ms": .integer(500)]))
        let sink = CollectingSink(clock: bench.clock)
        _ = try driver.setup(link: bench.host, sink: sink)
        try pump(driver, bench, sink) { sink.frames.count >= 2 }
        bench.clock.advance(seconds: 0.4)
        _ = bench.simulator.handle(AmptekRequest.clearSpectrum.encoded)  // another program clears it
        let before = sink.frames.count
        try pump(driver, bench, sink, step: 0.1) { sink.frames.count >= before + 2 }
        let back = sink.events(containing: "real time went back")
        XCTAssertEqual(back.count, 1, "\(sink.events.map(\.message))")
        XCTAssertEqual(back.first?.values["reason"], .string("real time went backwards"))
        XCTAssertLessThan(sink.frames[before].deviceTime!, sink.frames[before - 1].deviceTime!)
    }

    // MARK: Commands

    func testCommands_configureEnableDisableClearStatus() throws {
        let bench = SimulatorBench()
        let driver = try AmptekDriver(name: "xrf", settings: settings(["channels": .integer(256)]))
        let sink = CollectingSink(clock: bench.clock)
        _ = try driver.setup(link: bench.host, sink: sink)
        try pump(driver, bench, sink) { sink.frames.count >= 1 }
        // A poll in flight when the command comes is finished first.
        bench.clock.advance(seconds: 0.2)
        try driver.acquire(link: bench.host, sink: sink, budget: .milliseconds(0))
        let r = try driver.perform(DeviceCommand(device: "xrf", name: "configure", arguments: ["text": .string("PRET=20;THSL=1.2;")]), link: bench.host, sink: sink)
        XCTAssertEqual(r["PRET"], .string("20.0"))
        XCTAssertEqual(r["THSL"], .string("1.200"))
        XCTAssertEqual(driver.presetSeconds, 20)
        XCTAssertEqual(bench.simulator.setting("PRET"), "20.0")
        XCTAssertEqual(sink.events(containing: "configuration changed: PRET=20.0;THSL=1.200;").count, 1)
        XCTAssertTrue(sink.events(containing: "skipped").isEmpty, "\(sink.events.map(\.message))")

        XCTAssertThrowsError(try driver.perform(DeviceCommand(device: "xrf", name: "configure", arguments: ["text": .string("MCAC=512;")]), link: bench.host, sink: sink)) {
            XCTAssertTrue("\($0)".contains("stream's shape"), "\($0)")
        }
        XCTAssertThrowsError(try driver.perform(DeviceCommand(device: "xrf", name: "configure", arguments: ["text": .string("TPEA=200;")]), link: bench.host, sink: sink)) {
            XCTAssertTrue("\($0)".contains("ACK 05") && "\($0)".contains("TPEA=200;"), "\($0)")
        }
        XCTAssertThrowsError(try driver.perform(DeviceCommand(device: "xrf", name: "configure"), link: bench.host, sink: sink))

        let status = try driver.perform(DeviceCommand(device: "xrf", name: "status"), link: bench.host, sink: sink)
        XCTAssertEqual(status["serial_number"], .integer(31415))
        XCTAssertEqual(status["mca_enabled"], .bool(true))
        XCTAssertEqual(status["hv_v"]?.doubleValue ?? 0, -260, accuracy: 0.5)
        XCTAssertEqual(status["model"], .string("Amptek DP5 + PC5 (X-123SDD)"))

        XCTAssertEqual(try driver.perform(DeviceCommand(device: "xrf", name: "disable"), link: bench.host, sink: sink)["mca_enabled"], .bool(false))
        XCTAssertFalse(bench.simulator.snapshot.mcaEnabled)
        let frames = sink.frames.count
        let statuses = sink.statuses.count
        try pump(driver, bench, sink) { sink.statuses.count >= statuses + 3 }
        XCTAssertEqual(sink.frames.count, frames, "no spectra while disabled")

        _ = try driver.perform(DeviceCommand(device: "xrf", name: "enable"), link: bench.host, sink: sink)
        XCTAssertTrue(bench.simulator.snapshot.mcaEnabled)
        try pump(driver, bench, sink) { sink.frames.count >= frames + 2 }

        bench.clock.advance(seconds: 0.1)
        XCTAssertEqual(try driver.perform(DeviceCommand(device: "xrf", name: "clear"), link: bench.host, sink: sink)["cleared"], .bool(true))
        XCTAssertEqual(bench.simulator.snapshot.spectrumTotal, 0)
        let cleared = sink.frames.count
        try pump(driver, bench, sink) { sink.frames.count >= cleared + 2 }
        XCTAssertTrue(sink.events(containing: "went back").isEmpty, "a clear we asked for is not a reset")

        XCTAssertThrowsError(try driver.perform(DeviceCommand(device: "xrf", name: "home"), link: bench.host, sink: sink)) {
            XCTAssertEqual(($0 as? InstrumentError)?.code, .unsupported)
            XCTAssertTrue("\($0)".contains("configure, enable, disable, clear, status"))
        }
    }

    func testShutdown_disablesTheMCA() throws {
        let bench = SimulatorBench(mode: .byteStream)
        let driver = try AmptekDriver(name: "xrf", settings: settings())
        let sink = CollectingSink(clock: bench.clock)
        _ = try driver.setup(link: bench.host, sink: sink)
        XCTAssertTrue(bench.simulator.snapshot.mcaEnabled)
        let served = bench.simulator.snapshot.requestsServed
        driver.shutdown(link: bench.host)
        for _ in 0..<500 where bench.simulator.snapshot.requestsServed == served { ThreadSleep.sleep(.milliseconds(2)) }
        XCTAssertFalse(bench.simulator.snapshot.mcaEnabled)
    }

    /// Setup after a reconnect forgets a reply left over from the previous session.
    func testSetupAgain_afterAStaleReply_works() throws {
        let bench = SimulatorBench()
        let driver = try AmptekDriver(name: "xrf", settings: settings(["channels": .integer(256)]))
        let sink = CollectingSink(clock: bench.clock)
        _ = try driver.setup(link: bench.host, sink: sink)
        bench.clock.advance(seconds: 0.2)
        try driver.acquire(link: bench.host, sink: sink, budget: .milliseconds(0))  // request sent, reply not read
        for _ in 0..<500 where bench.simulator.snapshot.requestsServed < 7 { ThreadSleep.sleep(.milliseconds(2)) }
        XCTAssertEqual(bench.simulator.snapshot.requestsServed, 7, "status, disable, configure, read back, clear, enable, spectrum")
        _ = try driver.setup(link: bench.host, sink: sink)
        try pump(driver, bench, sink) { sink.frames.count >= 2 }
        XCTAssertTrue(sink.events(containing: "skipped").isEmpty, "\(sink.events.map(\.message))")
    }
}
