import AmptekDriver
import AmptekSimulator
import OperandoCore
import OperandoIO
import OperandoVirtualCell
import OperandoTestSupport
import XCTest

/// The simulator's device behaviour, checked with the driver's codec (written apart from it).
final class AmptekSimulatorTests: XCTestCase {
    private let clock = ManualClock()

    private func simulator(soc: Double = 0.5, seed: UInt64 = 3) -> AmptekSimulator {
        var p = VirtualCell.Parameters()
        p.initialStateOfCharge = soc
        return AmptekSimulator(cell: VirtualCell(p), clock: clock, serialNumber: "X123-27182", deviceClock: SimulatedDeviceClock(driftPPM: 0, offsetNs: 0), seed: seed)
    }

    /// Sends one request and decodes the single reply with the driver's framer.
    private func ask(_ sim: AmptekSimulator, _ request: [UInt8], file: StaticString = #filePath, line: UInt = #line) -> (AmptekPacketID, [UInt8]) {
        let replies = sim.handle(request)
        XCTAssertEqual(replies.count, 1, "one reply per request", file: file, line: line)
        let found = frame([replies.first ?? []])
        guard found.count == 1, let p = found[0].packet else {
            XCTFail("the reply is not one good packet: \(found)", file: file, line: line)
            return (AmptekPacketID(0, 0), [])
        }
        return p
    }

    private func ack(_ sim: AmptekSimulator, _ request: [UInt8], file: StaticString = #filePath, line: UInt = #line) -> AmptekAck? {
        let (id, data) = ask(sim, request, file: file, line: line)
        guard id.pid1 == 0xFF else { return nil }
        return data.withUnsafeBytes { AmptekAck(code: id.pid2, data: $0) }
    }

    func testMalformedRequests_getTheGuidesAckErrors() throws {
        let sim = simulator()
        XCTAssertEqual(ack(sim, hex("00 00 01 01 00 00 FE 0F"))?.code, AmptekAck.syncError)
        XCTAssertEqual(ack(sim, hex("F5 FA 01 07 00 00 FE 09"))?.code, AmptekAck.pidError, "01 07 is no request")
        XCTAssertEqual(ack(sim, AmptekPacket.encode(.requestStatus, data: [0, 0]))?.code, AmptekAck.lenError, "a status request has no data")
        XCTAssertEqual(ack(sim, hex("F5 FA 01 01 00 02 FE 0D"))?.code, AmptekAck.lenError, "LEN says 2 but no data came")
        XCTAssertEqual(ack(sim, hex("F5 FA 01 01 00 00 FE 10"))?.code, AmptekAck.checksumError)
        XCTAssertEqual(ack(sim, AmptekRequest.enableMCA.encoded)?.code, AmptekAck.ok)
        XCTAssertEqual(ack(sim, hex("F5 FA 03 01 00 00 FE 0D"))?.code, AmptekAck.scopeDataNotAvailable)
    }

    func testTextConfiguration_unknownCommandIs07_badValueIs05_withTheCommandEchoed() throws {
        let sim = simulator()
        let unknown = try XCTUnwrap(ack(sim, try AmptekRequest.textConfiguration("THSL=1.0;FOOO=1;").encoded))
        XCTAssertEqual(unknown.code, AmptekAck.unrecognizedCommand)
        XCTAssertEqual(unknown.echoedCommand, "FOOO=1;")
        XCTAssertEqual(sim.setting("THSL"), "1.000", "the valid command before it was applied")
        let bad = try XCTUnwrap(ack(sim, try AmptekRequest.textConfiguration("MCAC=1000;").encoded))
        XCTAssertEqual(bad.code, AmptekAck.badParameter)
        XCTAssertEqual(bad.echoedCommand, "MCAC=1000;")
        XCTAssertTrue(bad.message.contains("MCAC=1000;"))
        XCTAssertEqual(ack(sim, try AmptekRequest.textConfiguration("GAIN=200;").encoded)?.code, AmptekAck.badParameter, "a DP5 takes GAIN 0.75…150")
        XCTAssertEqual(ack(sim, try AmptekRequest.textConfiguration("HVSE=+100;").encoded)?.code, AmptekAck.badParameter, "an SDD bias is negative")
        XCTAssertEqual(ack(sim, try AmptekRequest.textConfiguration("TPEA=10US;MCAC=2048;PRET=12.5;CLCK=AU;").encoded)?.code, AmptekAck.ok)
        let (id, text) = ask(sim, try AmptekRequest.configurationReadback("MCAC;PRET;TPEA;CLCK;FOOO;RESC;HVSE;TECS;").encoded)
        XCTAssertEqual(id, .configurationReadback)
        XCTAssertEqual(String(decoding: text, as: UTF8.self), "MCAC=2048;PRET=12.5;TPEA=10.000;CLCK=AUTO;FOOO=??;RESC=?;HVSE=-260;TECS=220;")
        XCTAssertEqual(ack(sim, try AmptekRequest.textConfiguration("RESC=Y;").encoded)?.code, AmptekAck.ok)
        XCTAssertEqual(sim.setting("MCAC"), "1024")
        XCTAssertEqual(sim.setting("HVSE"), "OFF", "RESC restores the guide's defaults")
    }

    func testStatus_readsAsAnX123SDD() throws {
        let sim = simulator()
        let (id, data) = ask(sim, AmptekRequest.status.encoded)
        XCTAssertEqual(id, .status)
        let s = try XCTUnwrap(AmptekStatus(data))
        XCTAssertEqual(s.serialNumber, 27182)
        XCTAssertEqual(sim.serialNumberValue, 27182)
        XCTAssertEqual(s.firmwareVersion, "6.08.00")
        XCTAssertEqual(s.fpgaVersion, "6.12")
        XCTAssertEqual(s.deviceType, 0)
        XCTAssertEqual(s.modelName, "Amptek DP5 + PC5 (X-123SDD)")
        XCTAssertEqual(s.highVoltage, -260, accuracy: 0.5)
        XCTAssertEqual(s.detectorTemperatureK, 220, accuracy: 1)
        XCTAssertEqual(Double(s.boardTemperatureC), 30, accuracy: 3)
        XCTAssertTrue(s.firstSinceReboot, "the first status after power-up")
        XCTAssertFalse(s.mcaEnabled)
        let (_, again) = ask(sim, AmptekRequest.status.encoded)
        XCTAssertFalse(try XCTUnwrap(AmptekStatus(again)).firstSinceReboot)
    }

    func testMCA_accumulatesOnTheDeviceClock_liveTimeLessDeadTime_countsMatchTheStatus() throws {
        let sim = simulator()
        _ = ack(sim, try AmptekRequest.textConfiguration("MCAC=2048;").encoded)
        XCTAssertEqual(ack(sim, AmptekRequest.enableMCA.encoded)?.code, 0)
        clock.advance(seconds: 2)
        let expected = sim.snapshot
        let (id, data) = ask(sim, AmptekRequest.spectrumStatusClear.encoded)
        XCTAssertEqual(id, AmptekPacketID(0x81, 0x08))
        let r = try XCTUnwrap(AmptekSpectrum.decode(pid2: id.pid2, data: data))
        let s = try XCTUnwrap(r.status)
        XCTAssertEqual(r.counts.count, 2048)
        XCTAssertEqual(s.realTimeMs, 2000, "2 s on a device clock without drift")
        XCTAssertLessThan(s.accumulationTimeMs, s.realTimeMs, "dead time")
        XCTAssertGreaterThan(s.accumulationTimeMs, 1950)
        let total = r.counts.reduce(0) { $0 + UInt64($1) }
        XCTAssertEqual(UInt64(s.slowCount), total, "every counted event is in the spectrum")
        XCTAssertGreaterThanOrEqual(s.fastCount, s.slowCount)
        XCTAssertEqual(Double(total), expected.outputRateCps * 2, accuracy: 5 * (expected.outputRateCps * 2).squareRoot())
        XCTAssertGreaterThan(expected.outputRateCps, 3000)
        XCTAssertTrue(s.mcaEnabled)
        // Cleared in the same instant.
        let after = sim.snapshot
        XCTAssertEqual(after.spectrumTotal, 0)
        XCTAssertEqual(after.realTimeMs, 0)
        XCTAssertTrue(after.mcaEnabled)
    }

    /// Spectrum + status + clear reads the real time and clears at one instant, so the real
    /// times of consecutive frames add up to the device clock's elapsed time (the driver sums
    /// them into its device time). A host clock that moves on every reading exposes any time
    /// that falls between a frame's status and its clear.
    func testRealTimesOfClearedFrames_addUpToTheDeviceClocksElapsedTime() throws {
        let stepping = SteppingClock(stepNs: 370_000)
        let deviceClock = SimulatedDeviceClock(driftPPM: 150, offsetNs: 0)
        let sim = AmptekSimulator(cell: VirtualCell(), clock: stepping, serialNumber: "X123-1", deviceClock: deviceClock, seed: 5)
        XCTAssertEqual(sim.handle(AmptekRequest.enableMCA.encoded).count, 1)
        let before = deviceClock.deviceNanoseconds(at: stepping.now()) / 1_000_000
        var sum = 0
        for _ in 0..<200 {
            stepping.advance(nanoseconds: 20_000_000)
            let reply = try XCTUnwrap(sim.handle(AmptekRequest.spectrumStatusClear.encoded).first)
            let (id, data) = try XCTUnwrap(frame([reply]).first?.packet)
            sum += Int(try XCTUnwrap(AmptekSpectrum.decode(pid2: id.pid2, data: data)?.status).realTimeMs)
        }
        let after = deviceClock.deviceNanoseconds(at: stepping.now()) / 1_000_000
        // The sum spans from the enable to the last frame: inside [before, after], within a tick.
        XCTAssertLessThanOrEqual(sum, Int(after - before) + 1)
        XCTAssertGreaterThanOrEqual(sum, Int(after - before) - 3, "time was lost between frames: \(sum) ms summed, \(after - before) ms elapsed")
    }

    func testPresetTime_stopsTheMCAWhenAccumulationReachesIt() throws {
        let sim = simulator()
        _ = ack(sim, try AmptekRequest.textConfiguration("PRET=1.5;").encoded)
        _ = ack(sim, AmptekRequest.enableMCA.encoded)
        clock.advance(seconds: 1)
        let (_, mid) = ask(sim, AmptekRequest.status.encoded)
        XCTAssertFalse(try XCTUnwrap(AmptekStatus(mid)).presetTimeReached)
        clock.advance(seconds: 3)
        let (id, data) = ask(sim, AmptekRequest.spectrumStatus.encoded)
        let s = try XCTUnwrap(AmptekSpectrum.decode(pid2: id.pid2, data: data)?.status)
        XCTAssertTrue(s.presetTimeReached)
        XCTAssertFalse(s.mcaEnabled)
        XCTAssertEqual(Double(s.accumulationTimeMs), 1500, accuracy: 1)
        XCTAssertGreaterThan(s.realTimeMs, 1500, "the real time includes the dead time")
        XCTAssertLessThan(s.realTimeMs, 1600)
        clock.advance(seconds: 2)
        let (_, later) = ask(sim, AmptekRequest.status.encoded)
        XCTAssertEqual(try XCTUnwrap(AmptekStatus(later)).realTimeMs, s.realTimeMs, "a stopped MCA's clock stands still")
    }

    func testHighRates_showNonParalyzableDeadTime() throws {
        let sim = simulator()
        sim.countRateScale = 100
        _ = ack(sim, AmptekRequest.enableMCA.encoded)
        clock.advance(seconds: 0.5)
        let (id, data) = ask(sim, AmptekRequest.spectrumStatusClear.encoded)
        let s = try XCTUnwrap(AmptekSpectrum.decode(pid2: id.pid2, data: data)?.status)
        let input = sim.snapshot.inputRateCps
        XCTAssertGreaterThan(input, 400_000)
        // τ = 2 × 1 µs + 0.1 µs: live fraction 1 / (1 + R τ).
        let live = 1 / (1 + input * 2.1e-6)
        XCTAssertEqual(Double(s.accumulationTimeMs), 500 * live, accuracy: 2)
        XCTAssertGreaterThan(s.deadTimePercent, 40)
        XCTAssertLessThan(s.slowCount, s.fastCount)
    }

    func testNickelLines_followTheStateOfCharge_manganeseDoesNot() throws {
        func counts(soc: Double) throws -> (ni: Double, mn: Double, sim: AmptekSimulator) {
            let sim = simulator(soc: soc, seed: 9)
            _ = ack(sim, try AmptekRequest.textConfiguration("MCAC=4096;").encoded)
            _ = ack(sim, AmptekRequest.enableMCA.encoded)
            clock.advance(seconds: 5)
            let (id, data) = ask(sim, AmptekRequest.spectrumStatusClear.encoded)
            let c = try XCTUnwrap(AmptekSpectrum.decode(pid2: id.pid2, data: data)).counts
            func window(_ lo: Double, _ hi: Double) -> Double {
                (0..<4096).filter { (lo..<hi).contains(sim.channelEnergyKeV($0)) }.reduce(0) { $0 + Double(c[$1]) }
            }
            return (window(7.40, 7.56), window(5.82, 5.98), sim)
        }
        let low = try counts(soc: 0.1)
        let high = try counts(soc: 0.9)
        XCTAssertGreaterThan(high.ni / low.ni, 1.6, "Ni Kα grows as the cell charges: \(low.ni) → \(high.ni)")
        XCTAssertEqual(high.mn / low.mn, 1, accuracy: 0.06, "Mn Kα does not move")
        let e = AmptekSimulator.lineEnergiesKeV(stateOfCharge: 0.9)["Ni Ka"]! - AmptekSimulator.lineEnergiesKeV(stateOfCharge: 0.1)["Ni Ka"]!
        XCTAssertEqual(e * 1000, 3.2, accuracy: 0.01, "a shift of a few eV")
    }

    func testLineModel_isRebuiltOnlyWhenTheStateOfChargeMoves() throws {
        var p = VirtualCell.Parameters()
        p.initialStateOfCharge = 0.5
        p.timeScale = 1
        let cell = VirtualCell(p)
        let sim = AmptekSimulator(cell: cell, clock: clock, serialNumber: "1", deviceClock: SimulatedDeviceClock(driftPPM: 0, offsetNs: 0), seed: 1)
        _ = ack(sim, AmptekRequest.enableMCA.encoded)
        for _ in 0..<20 {
            clock.advance(seconds: 0.05)
            _ = ask(sim, AmptekRequest.spectrumStatusClear.encoded)
        }
        XCTAssertEqual(sim.snapshot.modelRebuilds, 1)
        cell.advance(current: 0.0000001, hostSeconds: 1)  // a tiny change: below 0.1 %
        _ = ask(sim, AmptekRequest.spectrumStatusClear.encoded)
        XCTAssertEqual(sim.snapshot.modelRebuilds, 1)
        cell.advance(current: 0.001, hostSeconds: 60)  // +0.33 % SOC
        _ = ask(sim, AmptekRequest.spectrumStatusClear.encoded)
        XCTAssertEqual(sim.snapshot.modelRebuilds, 2)
    }

    func testEchoBusyAndPowerCycle() throws {
        let sim = simulator()
        let (id, data) = ask(sim, try AmptekRequest.echo(Array("Detector Ready".utf8)).encoded)
        XCTAssertEqual(id, .echoReply)
        XCTAssertEqual(String(decoding: data, as: UTF8.self), "Detector Ready")
        sim.busy = true
        XCTAssertEqual(ack(sim, AmptekRequest.status.encoded)?.code, AmptekAck.busy)
        sim.busy = false
        // Saved (20 02) settings survive a power cycle; volatile ones (20 04) do not.
        _ = ack(sim, try AmptekRequest.textConfiguration("MCAC=512;").encoded)
        _ = ack(sim, try AmptekRequest.textConfigurationVolatile("THSL=2.000;").encoded)
        _ = ack(sim, AmptekRequest.enableMCA.encoded)
        sim.powerCycle()
        XCTAssertEqual(sim.setting("MCAC"), "512")
        XCTAssertEqual(sim.setting("THSL"), "0.500")
        let s = try XCTUnwrap(AmptekStatus(ask(sim, AmptekRequest.status.encoded).1))
        XCTAssertTrue(s.firstSinceReboot)
        XCTAssertFalse(s.mcaEnabled)
    }

    /// Over a byte stream the device finds requests between any bytes and answers a LEN over
    /// 512 with ACK 03 (it cannot answer a missing sync there).
    func testByteStream_skipsGarbageAndAnswersEachRequest() throws {
        let link = InMemoryLink(clock: MonotonicRawClock())
        let sim = simulator()
        let stop = StopFlag()
        let device = link.deviceByteStream
        let thread = IOThread(name: "amptek-sim-test") { sim.serve(device, shouldStop: { stop.isSet }) }
        defer {
            stop.set()
            thread.join()
        }
        let host = link.hostByteStream
        let out = hex("00 11 22") + AmptekRequest.status.encoded + hex("F5 FA 01 01 02 01") + AmptekRequest.enableMCA.encoded
        try out.withUnsafeBytes { try host.write($0, timeout: .seconds(1)) }
        let framer = AmptekFramer()
        var ids: [AmptekPacketID] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        for _ in 0..<200 where ids.count < 3 {
            let r = try buffer.withUnsafeMutableBytes { try host.read(into: $0, timeout: .milliseconds(20)) }
            buffer.withUnsafeBytes { b in
                framer.feed(UnsafeRawBufferPointer(rebasing: b[0..<r.count]), stamp: 0) { if case .packet(let id, _, _) = $0 { ids.append(id) } }
            }
        }
        XCTAssertEqual(ids, [.status, AmptekPacketID(0xFF, 0x03), .ackOK])
    }
}

/// A host clock that moves forward by `stepNs` every time it is read.
final class SteppingClock: HostClock, @unchecked Sendable {
    private let lock = ConditionLock()
    private var ns: Int64 = 1_000_000_000
    private let stepNs: Int64
    init(stepNs: Int64) { self.stepNs = stepNs }
    func now() -> HostInstant { lock.withLock { ns += stepNs; return HostInstant(nanoseconds: ns) } }
    func advance(nanoseconds: Int64) { lock.withLock { ns += nanoseconds } }
    func realtimeAnchor() -> RealtimeAnchor {
        let t = now()
        return RealtimeAnchor(before: t, after: t, utcNanoseconds: t.nanoseconds, taiOffsetSeconds: 0)
    }
}
