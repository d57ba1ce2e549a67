import OperandoCore
import XCTest

@testable import OperandoSync

/// Errors of `model` mapping each truth instant, in ns (mapped − true), and whether the
/// stated uncertainty covered it.
private struct Errors {
    var values: [Double] = []
    var covered = 0

    mutating func add(_ m: MappedInstant?, truth: Double, file: StaticString = #filePath, line: UInt = #line) {
        guard let m else {
            XCTFail("no mapping", file: file, line: line)
            return
        }
        let e = Double(m.host.nanoseconds) - truth
        values.append(e)
        if abs(e) <= Double(m.uncertaintyNs) { covered += 1 }
    }

    var maxAbs: Double { values.map(abs).max() ?? 0 }
    var coverage: Double { values.isEmpty ? 0 : Double(covered) / Double(values.count) }
    func quantile(_ p: Double) -> Double {
        let s = values.map(abs).sorted()
        return s.isEmpty ? 0 : s[min(s.count - 1, Int(p * Double(s.count)))]
    }
}

final class BracketedClockModelTests: XCTestCase {
    func testBracketed_noiseFree_recoversOffsetAndDriftExactly() throws {
        let clock = TestClock(rate: 37e-6)
        var random = TestRandom(seed: 1)
        let data = bracketedExchanges(clock: clock, bursts: 600, perBurst: 1, everyNs: 1_000_000_000, random: &random) { _ in 100_000 }
        var model = BracketedClockModel()
        for (e, _) in data { model.observe(e) }

        let segment = try XCTUnwrap(model.currentSegment)
        XCTAssertEqual(model.segments.count, 1)
        XCTAssertEqual(segment.drift, 1 / (1 + 37e-6) - 1, accuracy: 1e-9)
        // Offset: the last exchange and a device time between exchanges land on the truth.
        for t: Int64 in [599_000_000_000 + 100_000, 598_500_000_000] {
            let d = clock.device(atHost: t)
            let m = try XCTUnwrap(model.map(deviceTime: d))
            XCTAssertEqual(Double(m.host.nanoseconds), clock.host(ofDevice: d, near: t), accuracy: 2)
        }
    }

    func testBracketed_withExponentialDelays_recoversOffsetWithinUncertainty() {
        let clock = TestClock(rate: -63e-6)
        var random = TestRandom(seed: 2)
        let data = bracketedExchanges(clock: clock, bursts: 1440, random: &random) { $0.delay() }  // 2 h, LSL cadence
        var model = BracketedClockModel()
        var late = Errors()
        for (i, (e, truth)) in data.enumerated() {
            model.observe(e)
            if i >= data.count / 4 { late.add(model.map(deviceTime: e.deviceTime), truth: Double(truth)) }
        }
        XCTAssertEqual(model.segments.count, 1)
        XCTAssertLessThan(late.quantile(0.5), 2_000, "median error after 30 min")
        XCTAssertLessThan(late.maxAbs, 10_000, "worst error after 30 min")
        XCTAssertGreaterThanOrEqual(late.coverage, 0.99)
    }

    func testBracketed_uncertaintyCoversTrueErrorInAtLeast99PercentOfSamples() {
        for seed: UInt64 in [3, 4] {
            let clock = TestClock(rate: 80e-6)
            var random = TestRandom(seed: seed)
            let data = bracketedExchanges(clock: clock, bursts: 4320, random: &random) { $0.delay() }  // 6 h
            var model = BracketedClockModel()
            var errors = Errors()
            var next = 0
            // Data samples every 0.5 s, mapped with the model as it was when they were taken.
            for k in 0..<(6 * 7200) {
                let t = Int64(k) * 500_000_000 + 250_000_000
                while next < data.count && data[next].exchange.hostAfter.nanoseconds <= t {
                    model.observe(data[next].exchange)
                    next += 1
                }
                let d = clock.device(atHost: t)
                if let m = model.map(deviceTime: d) { errors.add(m, truth: clock.host(ofDevice: d, near: t)) }
            }
            XCTAssertGreaterThanOrEqual(errors.coverage, 0.99, "seed \(seed)")
        }
    }

    func testBracketed_whenDeviceClockResets_startsNewSegmentAndMapsBothSides() throws {
        var clock = TestClock(rate: 37e-6)
        let resetAt: Int64 = 3_600_000_000_000 + 2_500_000_000
        clock.reset(atHost: resetAt, to: 1_000_000_000)
        var random = TestRandom(seed: 5)
        let data = bracketedExchanges(clock: clock, bursts: 1440, random: &random) { $0.delay() }
        var model = BracketedClockModel()
        var events: [ClockModelEvent] = []
        var heldSample: (device: Int64, truth: Int64)?
        for (e, _) in data {
            // A sample taken just after the reset, received before the next exchange: no segment
            // can place it yet.
            if heldSample == nil && e.hostBefore.nanoseconds > resetAt {
                let t = resetAt + 1_000_000_000
                heldSample = (clock.device(atHost: t), t)
                XCTAssertNil(model.map(deviceTime: heldSample!.device, receivedAt: .init(nanoseconds: t + 500_000)))
            }
            if let event = model.observe(e) { events.append(event) }
        }
        XCTAssertEqual(model.segments.map(\.reason), [.first, .reset])
        XCTAssertTrue(events.contains { if case .segmentStarted(_, .reset, _) = $0 { return true } else { return false } })
        // Before the reset: the closed segment; after it: the live one.
        for t: Int64 in [1_800_000_000_000, resetAt - 3_000_000_000, resetAt + 1_800_000_000_000] {
            let d = clock.device(atHost: t)
            let m = try XCTUnwrap(model.map(deviceTime: d))
            XCTAssertEqual(Double(m.host.nanoseconds), clock.host(ofDevice: d, near: t), accuracy: 10_000, "at \(t)")
        }
        let held = try XCTUnwrap(heldSample)
        let m = try XCTUnwrap(model.map(deviceTime: held.device, receivedAt: .init(nanoseconds: held.truth + 500_000)))
        XCTAssertEqual(Double(m.host.nanoseconds), Double(held.truth), accuracy: Double(m.uncertaintyNs))
    }

    func testBracketed_whenRateSteps_startsNewSegmentNotABentLine() throws {
        var clock = TestClock(rate: 10e-6)
        let stepAt: Int64 = 3_600_000_000_000
        clock.changeRate(atHost: stepAt, to: 30e-6)
        var random = TestRandom(seed: 6)
        let data = bracketedExchanges(clock: clock, bursts: 1440, random: &random) { $0.delay() }
        var model = BracketedClockModel()
        var after = Errors()
        for (e, truth) in data {
            model.observe(e)
            if truth > stepAt + 600_000_000_000 { after.add(model.map(deviceTime: e.deviceTime), truth: Double(truth)) }
        }
        let segments = model.segments
        XCTAssertEqual(segments.map(\.reason), [.first, .rateChange])
        // The new segment starts near the step (within 2 min of device time) with the new drift.
        XCTAssertEqual(Double(segments[1].firstDeviceTime), Double(clock.device(atHost: stepAt)), accuracy: 120e9)
        XCTAssertEqual(segments[1].drift, 1 / (1 + 30e-6) - 1, accuracy: 0.05e-6)
        XCTAssertLessThan(after.maxAbs, 10_000)
    }

    func testBracketed_invalidExchange_isIgnored() {
        var model = BracketedClockModel()
        let e = BracketedExchange(hostBefore: .init(nanoseconds: 10), deviceTime: 5, hostAfter: .init(nanoseconds: 9))
        XCTAssertEqual(model.observe(e), .invalidObservation)
        XCTAssertNil(model.map(deviceTime: 5))
        XCTAssertTrue(model.segments.isEmpty)
    }
}

final class OneWayClockModelTests: XCTestCase {
    func testOneWay_noiseFree_recoversOffsetAndDriftExactly() throws {
        let clock = TestClock(rate: -91e-6)
        var random = TestRandom(seed: 10)
        let data = oneWaySamples(clock: clock, count: 30_000, random: &random) { _ in 0 }  // 5 min at 100 Hz
        var model = OneWayClockModel()
        for (s, _) in data { model.observe(s) }
        let segment = try XCTUnwrap(model.currentSegment)
        XCTAssertEqual(model.segments.count, 1)
        XCTAssertEqual(segment.drift, 1 / (1 - 91e-6) - 1, accuracy: 1e-9)
        for (s, truth) in data.suffix(1000) {
            let m = try XCTUnwrap(model.map(deviceTime: s.deviceTime))
            XCTAssertEqual(Double(m.host.nanoseconds), Double(truth), accuracy: 2)
        }
    }

    func testOneWay_withExponentialDelays_recoversWithinMicroseconds() {
        let clock = TestClock(rate: 100e-6)
        var random = TestRandom(seed: 11)
        let data = oneWaySamples(clock: clock, count: 180_000, random: &random) { $0.delay() }  // 30 min
        var model = OneWayClockModel()
        var late = Errors()
        for (i, (s, truth)) in data.enumerated() {
            model.observe(s)
            if i >= 30_000 { late.add(model.map(deviceTime: s.deviceTime), truth: Double(truth)) }
        }
        XCTAssertEqual(model.segments.count, 1)
        XCTAssertLessThan(late.quantile(0.99), 1_000)
        XCTAssertLessThan(late.maxAbs, 3_000)
    }

    func testOneWay_uncertaintyCoversTrueErrorInAtLeast99PercentOfSamples() {
        for seed: UInt64 in [12, 13] {
            let clock = TestClock(rate: -42e-6)
            var random = TestRandom(seed: seed)
            let data = oneWaySamples(clock: clock, count: 360_000, random: &random) { $0.delay() }  // 1 h
            var model = OneWayClockModel()
            var errors = Errors()
            for (s, truth) in data {
                model.observe(s)
                errors.add(model.map(deviceTime: s.deviceTime), truth: Double(truth))
            }
            XCTAssertGreaterThanOrEqual(errors.coverage, 0.99, "seed \(seed)")
        }
    }

    func testOneWay_with20msStall_lowerEnvelopeIgnoresIt() throws {
        let clock = TestClock(rate: 25e-6)
        let stallStart: Int64 = 600_000_000_000
        func run(stall: Bool) -> (OneWayClockModel, Errors) {
            var random = TestRandom(seed: 14)
            let data = oneWaySamples(clock: clock, count: 120_000, random: &random) { r in
                r.delay(stallProbability: 0)
            }
            var model = OneWayClockModel()
            var errors = Errors()
            var held: Int64 = .min
            for (s, truth) in data {
                var sample = s
                // Everything sent during 200 ms waits behind a 20 ms stall, then arrives in order.
                if stall && truth >= stallStart && truth < stallStart + 200_000_000 {
                    held = max(held, s.hostArrival.nanoseconds + 20_000_000)
                    sample.hostArrival = .init(nanoseconds: held)
                }
                model.observe(sample)
                if truth > stallStart { errors.add(model.map(deviceTime: s.deviceTime), truth: Double(truth)) }
            }
            return (model, errors)
        }
        let (clean, cleanErrors) = run(stall: false)
        let (stalled, stalledErrors) = run(stall: true)
        XCTAssertEqual(stalled.segments.count, 1)
        XCTAssertEqual(try XCTUnwrap(stalled.currentSegment).drift, try XCTUnwrap(clean.currentSegment).drift, accuracy: 1e-12)
        XCTAssertEqual(stalledErrors.maxAbs, cleanErrors.maxAbs, accuracy: 100)
        XCTAssertLessThan(stalledErrors.maxAbs, 3_000)
    }

    func testOneWay_whenDeviceClockResets_startsNewSegmentAndMapsBothSides() throws {
        var clock = TestClock(rate: -17e-6)
        let resetAt: Int64 = 1_200_000_000_000
        clock.reset(atHost: resetAt, to: 0)
        var random = TestRandom(seed: 15)
        let data = oneWaySamples(clock: clock, count: 240_000, random: &random) { $0.delay() }
        var model = OneWayClockModel()
        var after = Errors()
        for (s, truth) in data {
            model.observe(s)
            if truth > resetAt + 60_000_000_000 { after.add(model.map(deviceTime: s.deviceTime), truth: Double(truth)) }
        }
        XCTAssertEqual(model.segments.map(\.reason), [.first, .reset])
        XCTAssertLessThan(after.maxAbs, 5_000)
        // A device time from before the reset maps through the closed segment.
        let t: Int64 = 900_000_000_000
        let m = try XCTUnwrap(model.map(deviceTime: clock.device(atHost: t)))
        XCTAssertEqual(Double(m.host.nanoseconds), Double(t), accuracy: 5_000)
    }

    func testOneWay_whenRateStepsUp_startsNewSegmentNotABentLine() throws {
        try rateStep(from: 10e-6, to: 30e-6, seed: 16)
    }

    func testOneWay_whenRateStepsDown_startsNewSegmentNotABentLine() throws {
        try rateStep(from: 30e-6, to: 10e-6, seed: 17)
    }

    private func rateStep(from: Double, to: Double, seed: UInt64, file: StaticString = #filePath, line: UInt = #line) throws {
        var clock = TestClock(rate: from)
        let stepAt: Int64 = 1_200_000_000_000
        clock.changeRate(atHost: stepAt, to: to)
        var random = TestRandom(seed: seed)
        let data = oneWaySamples(clock: clock, count: 240_000, random: &random) { $0.delay() }
        var model = OneWayClockModel()
        var after = Errors()
        for (s, truth) in data {
            model.observe(s)
            if truth > stepAt + 120_000_000_000 { after.add(model.map(deviceTime: s.deviceTime), truth: Double(truth)) }
        }
        let segments = model.segments
        XCTAssertEqual(segments.map(\.reason), [.first, .rateChange], file: file, line: line)
        guard segments.count == 2 else { return }
        XCTAssertEqual(Double(segments[1].firstDeviceTime), Double(clock.device(atHost: stepAt)), accuracy: 40e9, file: file, line: line)
        XCTAssertEqual(segments[1].drift, 1 / (1 + to) - 1, accuracy: 0.01e-6, file: file, line: line)
        XCTAssertLessThan(after.maxAbs, 3_000, file: file, line: line)
    }

    func testOneWay_overAMillionSamples_keepsMemoryBounded() {
        let clock = TestClock(rate: 55e-6)
        var random = TestRandom(seed: 18)
        let configuration = ClockModelConfiguration.oneWay
        var model = OneWayClockModel(configuration: configuration)
        let bound = configuration.levels * (configuration.windowBlocks + 1) + configuration.violationsToConfirm * (configuration.suspicionObservations + 1)
        var last = Int64.min
        var largest = 0
        for k in 0..<1_000_000 {
            let t = Int64(k) * 10_000_000
            let arrival = max(t + random.delay(), last)
            last = arrival
            model.observe(OneWaySample(deviceTime: clock.device(atHost: t), hostArrival: .init(nanoseconds: arrival)))
            if k % 1000 == 0 { largest = max(largest, model.retainedCount) }
        }
        XCTAssertLessThanOrEqual(largest, bound)
        XCTAssertEqual(model.segments.count, 1, "no change in the clock, no new segment")
    }
}

final class RefitTests: XCTestCase {
    func testRefit_oneWayWithReset_findsSegmentsAndMapsWithinAMicrosecond() {
        var clock = TestClock(rate: 72e-6)
        let resetAt: Int64 = 1_800_000_000_000
        clock.reset(atHost: resetAt, to: 42_000_000)
        var random = TestRandom(seed: 20)
        let data = oneWaySamples(clock: clock, count: 360_000, random: &random) { $0.delay() }
        let segments = refit(data.map(\.sample))
        XCTAssertEqual(segments.map(\.reason), [.first, .reset])
        XCTAssertEqual(segments.map(\.observationCount).reduce(0, +), data.count)
        XCTAssertFalse(segments[0].knots.isEmpty)
        var errors = Errors()
        var s = 0
        for (k, (sample, truth)) in data.enumerated() {
            while s + 1 < segments.count && segments[s + 1].firstObservationIndex <= k { s += 1 }
            errors.add(segments[s].map(deviceTime: sample.deviceTime), truth: Double(truth))
        }
        XCTAssertLessThan(errors.quantile(0.99), 1_000)
        XCTAssertGreaterThanOrEqual(errors.coverage, 0.99)
    }

    func testRefit_bracketed_matchesLiveSegmentsAndBeatsLiveErrors() {
        var clock = TestClock(rate: -20e-6)
        clock.changeRate(atHost: 3_600_000_000_000, to: 5e-6)
        var random = TestRandom(seed: 21)
        let data = bracketedExchanges(clock: clock, bursts: 1440, random: &random) { $0.delay() }
        var live = BracketedClockModel()
        var liveErrors = Errors()
        for (e, truth) in data {
            live.observe(e)
            liveErrors.add(live.map(deviceTime: e.deviceTime), truth: Double(truth))
        }
        let segments = refit(data.map(\.exchange))
        XCTAssertEqual(segments.map(\.reason), live.segments.map(\.reason))
        var refitErrors = Errors()
        for (e, truth) in data {
            guard let segment = segments.segment(receivedAt: e.hostAfter) else { continue }
            refitErrors.add(segment.map(deviceTime: e.deviceTime), truth: Double(truth))
        }
        XCTAssertLessThan(refitErrors.quantile(0.5), liveErrors.quantile(0.5))
        XCTAssertLessThan(refitErrors.quantile(0.99), 5_000)
    }
}

final class HostStampedModelTests: XCTestCase {
    func testHostStamped_uncertaintyIsHalfTheP1ToP99RoundTripSpread() throws {
        var model = HostStampedModel(capacity: 100)
        XCTAssertNil(model.map(hostStamp: .init(nanoseconds: 5)))
        for ms in (1...100).shuffled() {
            model.observe(RoundTrip(sent: .init(nanoseconds: 0), received: .init(nanoseconds: Int64(ms) * 1_000_000)))
        }
        // Nearest rank: p1 = 1 ms, p99 = 99 ms.
        XCTAssertEqual(model.latencySpreadNs, (99_000_000 - 1_000_000 + 1) / 2)
        let m = try XCTUnwrap(model.map(hostStamp: .init(nanoseconds: 123_456)))
        XCTAssertEqual(m.host.nanoseconds, 123_456)
        XCTAssertEqual(m.uncertaintyNs, 49_000_000)
        XCTAssertEqual(
            model.map(sent: .init(nanoseconds: 1_000), received: .init(nanoseconds: 3_001)),
            MappedInstant(host: .init(nanoseconds: 2_000), uncertaintyNs: 1_001))
        XCTAssertTrue(model.segments.isEmpty)
    }

    func testHostStamped_keepsOnlyTheLastCapacityRoundTrips() {
        var model = HostStampedModel(capacity: 16)
        for _ in 0..<1000 { model.observe(RoundTrip(sent: .init(nanoseconds: 0), received: .init(nanoseconds: 50_000_000))) }
        for _ in 0..<16 { model.observe(RoundTrip(sent: .init(nanoseconds: 0), received: .init(nanoseconds: 2_000))) }
        XCTAssertEqual(model.retainedCount, 16)
        XCTAssertEqual(model.latencySpreadNs, 0)
        XCTAssertEqual(model.medianRoundTripNs, 2_000)
    }

    func testHostStamped_negativeRoundTrip_isRejected() {
        var model = HostStampedModel()
        XCTAssertEqual(model.observe(RoundTrip(sent: .init(nanoseconds: 10), received: .init(nanoseconds: 5))), .invalidObservation)
        XCTAssertEqual(model.retainedCount, 0)
    }
}

final class EnvelopeTests: XCTestCase {
    func testLowerHull_dropsPointsOnOrAboveTheChords() {
        let points = [(0.0, 5.0), (1, 1), (2, 3), (3, 0), (4, 2), (5, 4), (6, 6)].map { EnvelopePoint(x: $0.0, y: $0.1) }
        XCTAssertEqual(Envelope.lowerHull(points).map(\.x), [0, 1, 3, 6])
    }

    func testLowerHull_withEqualX_keepsTheLowestPoint() {
        let points = [(0.0, 1.0), (1, 4), (1, 2), (2, 1)].map { EnvelopePoint(x: $0.0, y: $0.1) }
        XCTAssertEqual(Envelope.lowerHull(points), [EnvelopePoint(x: 0, y: 1), EnvelopePoint(x: 2, y: 1)])
    }

    func testSupportingLine_runsAlongTheEdgeOverTheGivenX() throws {
        let hull = [(0.0, 5.0), (1, 1), (3, 0), (6, 6)].map { EnvelopePoint(x: $0.0, y: $0.1) }
        let line = try XCTUnwrap(Envelope.supportingLine(hull: hull, at: 2))
        XCTAssertEqual(line.slope, -0.5, accuracy: 1e-12)
        XCTAssertEqual(line.value, 0.5, accuracy: 1e-12)
        // At a vertex the slope is the mean of its two edges'.
        let atVertex = try XCTUnwrap(Envelope.supportingLine(hull: hull, at: 3))
        XCTAssertEqual(atVertex.slope, (-0.5 + 2) / 2, accuracy: 1e-12)
        XCTAssertNil(Envelope.supportingLine(hull: [hull[0]], at: 0))
    }

    func testFitBelow_linearProgrammingLine_isUnderEveryPointAndHighestAtTheMean() throws {
        var random = TestRandom(seed: 30)
        let points = (0..<200).map { i in EnvelopePoint(x: Double(i) * 1e9, y: 3e-6 * Double(i) * 1e9 + Double(random.delay(stallProbability: 0))) }
        let fit = try XCTUnwrap(Envelope.fitBelow(points, slope: nil, fallbackSlope: 0))
        XCTAssertTrue(fit.slopeFromHull)
        for p in points { XCTAssertGreaterThanOrEqual(p.y - fit.y(p.x), -1e-3) }
        XCTAssertEqual(fit.slope, 3e-6, accuracy: 0.1e-6)
    }

    func testSelect_findsTheSameElementAsSorting() {
        var random = TestRandom(seed: 31)
        for n in [1, 2, 5, 17, 256] {
            var values = (0..<n).map { _ in Double(random.next() % 50) }
            let sorted = values.sorted()
            for k in [0, n / 10, n / 2, n - 1] {
                var copy = values
                XCTAssertEqual(Envelope.select(&copy, rank: k, in: 0..<n), sorted[k], "n \(n) k \(k)")
            }
            values.removeAll()
        }
    }

    func testConfiguration_defaultsAreValidAndBadValuesAreNamed() {
        XCTAssertEqual(ClockModelConfiguration.bracketed.problems, [])
        XCTAssertEqual(ClockModelConfiguration.oneWay.problems, [])
        var bad = ClockModelConfiguration.oneWay
        bad.blockNs = 0
        bad.windowBlocks = 2
        XCTAssertEqual(bad.problems.count, 3)  // blockNs, windowBlocks, and changeBlocks no longer fits the window
        XCTAssertTrue(bad.problems[0].contains("blockNs"))
    }

    func testMap_beforeAnyObservation_isNil() {
        XCTAssertNil(OneWayClockModel().map(deviceTime: 0))
        XCTAssertNil(BracketedClockModel().map(deviceTime: 0))
        XCTAssertTrue(OneWayClockModel().segments.isEmpty)
    }
}
