import ArgumentParser
import Foundation
import OperandoCore
import OperandoSync
import Synchronization

/// `operando-bench sync`: the clock models against simulated device clocks with known truth.
///
/// Every scenario simulates `hours` of one device with a seeded, deterministic generator:
///
/// - Device clocks: an offset (the device booted 5 h before the run), a drift, and per scenario
///   a drift of ±100 ppm, a reset to zero mid-run, two 20 ppm rate steps, or a wandering drift
///   (50 ppm + 0.1 ppm · sin(2π t / 1 h), a temperature cycle). Device timestamps tick in µs.
/// - Transport: every one-way trip is delayed by an exponential with a 1 ms mean, plus a 20 ms
///   stall with probability 0.1 %; a stream is delivered in order (a stalled sample holds up
///   the ones behind it).
/// - Bracketed devices: every 5 s a burst of 8 back-to-back exchanges (request, device reads
///   its clock, reply; 1 ms between exchanges): LabStreamingLayer's cadence, so our estimator
///   and the baseline see exactly the same exchanges. The device also streams data samples at
///   `bracketedDataHz`, which are mapped when they arrive; a sample no segment can place yet
///   (just after a reset) is held and mapped after the next exchange, as a daemon would.
/// - One-way devices: samples at `oneWayHz`, each an observation and a mapped timestamp.
/// - The models are told the device's 1 µs tick (`resolutionNs`); otherwise defaults.
///
/// Errors are mapped host time − true host time of the device's event. "ours" is causal: each
/// sample is mapped with the model as it was when the sample arrived (what a live daemon
/// records). "refit" maps the same samples after the fact with `refit`. The baselines:
/// bracketed, LSL-style: per burst the exchange with the smallest round trip gives an offset
/// (midpoint − device time), and one least-squares line through all those offsets over the run
/// maps every sample; one-way: one least-squares line through all (device time, arrival) pairs.
/// Both baselines fit with hindsight over the whole run, as LSL's importers do.
///
/// Quantiles come from a histogram with bins 0.4 % wide (the upper edge is reported); the
/// maximum is exact. Scenarios run on `--threads` threads; the figures do not depend on it.
struct SyncBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sync", abstract: "Clock-model mapping error against simulated truth, next to an LSL-style baseline.")

    @Flag(name: .long, help: "One JSON object: per scenario p50_us, p99_us, max_us, baseline_p99_us and more.") var json = false
    @Option(name: .long, help: "Simulated hours per scenario.") var hours: Double = 24
    @Option(name: .long, help: "Seed of the deterministic generator.") var seed: UInt64 = 20_240_607
    @Option(name: .long, help: "One-way stream rate, Hz.") var oneWayHz: Double = 100
    @Option(name: .long, help: "Rate of the data samples mapped in bracketed scenarios, Hz.") var bracketedDataHz: Double = 10
    @Flag(name: .long, help: "Skip the after-the-fact refit.") var noRefit = false
    @Option(name: .long, help: "Run only the scenarios whose name contains this.") var only: String?
    @Flag(name: .long, help: "Also print, per scenario and time bucket, our error quantiles and the window in use.") var trace = false
    @Option(name: .long, help: "Minutes per --trace bucket.") var traceMinutes: Double = 60
    @Option(name: .long, help: "Scenarios run at once (the figures do not depend on it).") var threads = 2

    /// The simulated devices stamp in µs: a known property of the device, so it is configured.
    static let deviceTickNs: Int64 = 1000

    func run() throws {
        let duration = Int64(hours * 3600e9)
        let kinds: [ClockScenario.Kind] = [.offset, .driftUp, .driftDown, .reset, .rateSteps, .wander]
        var jobs: [(scenario: ClockScenario, seed: UInt64)] = []
        for transport in [ClockScenario.Transport.bracketed, .oneWay] {
            for (i, kind) in kinds.enumerated() {
                let scenario = ClockScenario(kind: kind, transport: transport, duration: duration)
                if let only, !scenario.name.contains(only) { continue }
                jobs.append((scenario, seed &+ UInt64(i) &* 1_000_003 &+ (transport == .oneWay ? 77 : 0)))
            }
        }
        let work = jobs
        let runner = SyncRunner(
            noRefit: noRefit, trace: trace, traceNs: Int64(traceMinutes * 60e9), oneWayHz: oneWayHz, bracketedDataHz: bracketedDataHz)
        let results = Mutex<[SyncResult?]>(Array(repeating: nil, count: work.count))
        let next = Atomic<Int>(0)
        let clock = ContinuousClock()
        let start = clock.now
        // One-way scenarios are the long ones: start them first.
        let order = work.indices.sorted { (work[$0].scenario.transport == .oneWay ? 0 : 1) < (work[$1].scenario.transport == .oneWay ? 0 : 1) }
        let workers = trace ? 1 : max(1, min(threads, work.count))
        DispatchQueue.concurrentPerform(iterations: workers) { _ in
            while true {
                let n = next.add(1, ordering: .relaxed).oldValue  // relaxed: only hands out distinct indices
                guard n < order.count else { return }
                let job = work[order[n]]
                let r =
                    job.scenario.transport == .bracketed ? runner.runBracketed(job.scenario, seed: job.seed) : runner.runOneWay(job.scenario, seed: job.seed)
                results.withLock { $0[order[n]] = r }
            }
        }
        let elapsed = clock.now - start
        report(results.withLock { $0.compactMap { $0 } }, seconds: Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18)
    }
}

/// Simulates and measures one scenario; no shared state, so scenarios can run on several threads.
struct SyncRunner: Sendable {
    var noRefit: Bool
    var trace: Bool
    var traceNs: Int64
    var oneWayHz: Double
    var bracketedDataHz: Double

    // MARK: Runs

    func runBracketed(_ scenario: ClockScenario, seed: UInt64) -> SyncResult {
        var transportRNG = SeededRandom(seed: seed)
        let dataSeed = seed ^ 0x5DEE_CE66
        var dataRNG = SeededRandom(seed: dataSeed)
        let truth = scenario.clock
        var configuration = ClockModelConfiguration.bracketed
        configuration.resolutionNs = Double(SyncBench.deviceTickNs)
        var model = BracketedClockModel(configuration: configuration)
        var ours = ErrorStats()
        var exchanges: [BracketedExchange] = []
        exchanges.reserveCapacity(Int(scenario.duration / 5_000_000_000 + 1) * 8)
        var baseline = LineFit()
        var burstStart: Int64 = 0
        var pendingExchanges: [BracketedExchange] = []
        var held: [(device: Int64, truth: Int64, arrival: Int64)] = []
        var heldCount = 0
        var tracer = Tracer(bucketNs: traceNs)
        let period = Int64(1e9 / bracketedDataHz)
        let samples = Int(scenario.duration / period)

        /// Simulates the next burst of 8 exchanges into `pendingExchanges`.
        func burst() {
            var t = burstStart
            var best: BracketedExchange?
            for _ in 0..<8 {
                let d1 = transportRNG.delay()
                let d2 = transportRNG.delay()
                let e = BracketedExchange(
                    hostBefore: .init(nanoseconds: t), deviceTime: truth.stamp(atHost: t + d1), hostAfter: .init(nanoseconds: t + d1 + d2))
                pendingExchanges.append(e)
                if best == nil || e.roundTripNs < best!.roundTripNs { best = e }
                t = e.hostAfter.nanoseconds + 1_000_000
            }
            // LSL: the minimum-round-trip exchange's offset, midpoint − device time.
            let b = best!
            let mid = Double(b.hostBefore.nanoseconds) + Double(b.roundTripNs) / 2
            baseline.add(x: Double(b.deviceTime), y: mid - Double(b.deviceTime))
            burstStart += 5_000_000_000
        }

        func mapHeld() {
            var still: [(device: Int64, truth: Int64, arrival: Int64)] = []
            for h in held {
                if let m = model.map(deviceTime: h.device, receivedAt: .init(nanoseconds: h.arrival)) {
                    ours.add(error: Double(m.host.nanoseconds - h.truth), uncertainty: Double(m.uncertaintyNs))
                } else {
                    still.append(h)
                }
            }
            held = still
        }

        burst()
        var nextExchange = 0
        for k in 0..<samples {
            let t = Int64(k) * period + period / 2
            let device = truth.stamp(atHost: t)
            let arrival = t + dataRNG.delay()
            // Every exchange whose reply came back before this sample arrived.
            while true {
                if nextExchange == pendingExchanges.count {
                    pendingExchanges.removeAll(keepingCapacity: true)
                    nextExchange = 0
                    guard burstStart <= scenario.duration else { break }
                    burst()
                }
                let e = pendingExchanges[nextExchange]
                guard e.hostAfter.nanoseconds <= arrival else { break }
                model.observe(e)
                exchanges.append(e)
                nextExchange += 1
                if !held.isEmpty { mapHeld() }
            }
            if let m = model.map(deviceTime: device, receivedAt: .init(nanoseconds: arrival)) {
                ours.add(error: Double(m.host.nanoseconds - t), uncertainty: Double(m.uncertaintyNs))
                if trace { tracer.add(t: t, error: Double(m.host.nanoseconds - t), uncertainty: Double(m.uncertaintyNs), model: model.currentSegment) }
            } else {
                held.append((device, t, arrival))
                heldCount += 1
            }
        }
        if trace { tracer.print(scenario.name) }
        ours.unmapped = held.count

        // The baseline's line, and the refit, over the same samples.
        var base = ErrorStats()
        let line = baseline.solve()
        var refitStats = ErrorStats()
        let segments = noRefit ? [] : refit(exchanges, configuration: configuration)
        dataRNG = SeededRandom(seed: dataSeed)
        for k in 0..<samples {
            let t = Int64(k) * period + period / 2
            let device = truth.stamp(atHost: t)
            let arrival = t + dataRNG.delay()
            let x = Double(device)
            base.add(error: x + line.a + line.b * x - Double(t), uncertainty: .infinity)
            if let seg = segments.segment(receivedAt: .init(nanoseconds: arrival)), let m = seg.map(deviceTime: device) {
                refitStats.add(error: Double(m.host.nanoseconds - t), uncertainty: Double(m.uncertaintyNs))
            } else if !noRefit {
                refitStats.unmapped += 1
            }
        }
        return SyncResult(
            name: scenario.name, ours: ours, refit: noRefit ? nil : refitStats, baseline: base, segments: model.segments,
            trueSegments: scenario.trueSegments, held: heldCount, observations: exchanges.count)
    }

    func runOneWay(_ scenario: ClockScenario, seed: UInt64) -> SyncResult {
        var rng = SeededRandom(seed: seed)
        let truth = scenario.clock
        var configuration = ClockModelConfiguration.oneWay
        configuration.resolutionNs = Double(SyncBench.deviceTickNs)
        var model = OneWayClockModel(configuration: configuration)
        var ours = ErrorStats()
        var baseline = LineFit()
        let period = Int64(1e9 / oneWayHz)
        let count = Int(scenario.duration / period)
        var stored: [OneWaySample] = []
        if !noRefit { stored.reserveCapacity(count) }
        var lastArrival = Int64.min
        var tracer = Tracer(bucketNs: traceNs)
        for k in 0..<count {
            let t = Int64(k) * period + period / 2
            let device = truth.stamp(atHost: t)
            let arrival = max(t + rng.delay(), lastArrival)
            lastArrival = arrival
            let s = OneWaySample(deviceTime: device, hostArrival: .init(nanoseconds: arrival))
            model.observe(s)
            if let m = model.map(deviceTime: device) {
                ours.add(error: Double(m.host.nanoseconds - t), uncertainty: Double(m.uncertaintyNs))
                if trace { tracer.add(t: t, error: Double(m.host.nanoseconds - t), uncertainty: Double(m.uncertaintyNs), model: model.currentSegment) }
            } else {
                ours.unmapped += 1
            }
            baseline.add(x: Double(device), y: Double(arrival - device))
            if !noRefit { stored.append(s) }
        }
        if trace { tracer.print(scenario.name) }
        var base = ErrorStats()
        let line = baseline.solve()
        let segments = noRefit ? [] : refit(stored, configuration: configuration)
        var refitStats = ErrorStats()
        var segment = 0
        for k in 0..<count {
            let t = Int64(k) * period + period / 2
            let device = truth.stamp(atHost: t)
            let x = Double(device)
            base.add(error: x + line.a + line.b * x - Double(t), uncertainty: .infinity)
            guard !noRefit else { continue }
            while segment + 1 < segments.count && segments[segment + 1].firstObservationIndex <= k { segment += 1 }
            if let m = segments[segment].map(deviceTime: device) {
                refitStats.add(error: Double(m.host.nanoseconds - t), uncertainty: Double(m.uncertaintyNs))
            } else {
                refitStats.unmapped += 1
            }
        }
        return SyncResult(
            name: scenario.name, ours: ours, refit: noRefit ? nil : refitStats, baseline: base, segments: model.segments,
            trueSegments: scenario.trueSegments, held: 0, observations: count)
    }

}

extension SyncBench {
    // MARK: Report

    func report(_ results: [SyncResult], seconds: Double) {
        let target = 50.0
        if json {
            var parts: [String] = []
            for r in results {
                var fields: [(String, Double)] = [
                    ("p50_us", r.ours.quantile(0.5) / 1e3), ("p99_us", r.ours.quantile(0.99) / 1e3), ("max_us", r.ours.max / 1e3),
                    ("baseline_p50_us", r.baseline.quantile(0.5) / 1e3), ("baseline_p99_us", r.baseline.quantile(0.99) / 1e3),
                    ("baseline_max_us", r.baseline.max / 1e3), ("coverage", r.ours.coverage), ("segments", Double(r.segments.count)),
                    ("true_segments", Double(r.trueSegments)), ("held_samples", Double(r.held)), ("unmapped_samples", Double(r.ours.unmapped)),
                ]
                if let f = r.refit {
                    fields += [("refit_p50_us", f.quantile(0.5) / 1e3), ("refit_p99_us", f.quantile(0.99) / 1e3), ("refit_max_us", f.max / 1e3)]
                }
                let body = fields.map { "\"\($0.0)\": \(jsonNumber($0.1))" }.joined(separator: ", ")
                parts.append("\"\(r.name)\": {\(body)}")
            }
            print("{\(parts.joined(separator: ", "))}")
            return
        }
        print(
            String(
                format: "clock models: %.0f h per scenario, seed %llu, one-way %.0f Hz, bracketed data %.0f Hz (%.1f s on %d threads)", hours, seed, oneWayHz,
                bracketedDataHz, seconds, trace ? 1 : threads))
        print("errors |mapped − true| in µs; ours = online/causal; coverage = share of samples with |error| ≤ stated uncertainty")
        let header = [
            pad("scenario", 22), lpad("p50", 8), lpad("p99", 8), lpad("max", 9), lpad("cover%", 8), lpad("refit99", 8), lpad("refitMax", 9),
            lpad("base50", 9), lpad("base99", 10), lpad("segs", 6), "  targets",
        ].joined()
        print(header)
        for r in results {
            let p99 = r.ours.quantile(0.99) / 1e3
            let b99 = r.baseline.quantile(0.99) / 1e3
            let ok = p99 <= target && p99 < b99
            let row = [
                pad(r.name, 22), lpad(fmt(r.ours.quantile(0.5) / 1e3), 8), lpad(fmt(p99), 8), lpad(fmt(r.ours.max / 1e3), 9),
                lpad(String(format: "%.2f", r.ours.coverage * 100), 8),
                lpad(r.refit.map { fmt($0.quantile(0.99) / 1e3) } ?? "-", 8), lpad(r.refit.map { fmt($0.max / 1e3) } ?? "-", 9),
                lpad(fmt(r.baseline.quantile(0.5) / 1e3), 9), lpad(fmt(b99), 10), lpad("\(r.segments.count)/\(r.trueSegments)", 6),
                ok ? "  met" : "  NOT MET",
            ].joined()
            print(row)
        }
        print("targets: p99 ≤ \(Int(target)) µs and p99 < baseline p99 in every scenario; segs = detected/true segments")
        for r in results where r.held > 0 || r.ours.unmapped > 0 {
            print("  \(r.name): \(r.held) samples held to the next exchange (no segment fit their arrival), \(r.ours.unmapped) never mapped")
        }
        for r in results where r.segments.count > 1 {
            let list = r.segments.map { "\($0.reason.rawValue)@\(String(format: "%.1f", Double($0.firstHost.nanoseconds) / 3.6e12))h" }
            print("  \(r.name) segments: \(list.joined(separator: ", "))")
        }
    }
}

private func fmt(_ v: Double) -> String {
    if !v.isFinite { return "inf" }
    if v >= 1e6 { return String(format: "%.2e", v) }
    if v >= 100 { return String(format: "%.0f", v) }
    return String(format: "%.2f", v)
}

private func jsonNumber(_ v: Double) -> String { v.isFinite ? String(format: "%.6g", v) : "null" }

private func pad(_ s: String, _ n: Int) -> String { s.count >= n ? s + " " : s + String(repeating: " ", count: n - s.count) }

private func lpad(_ s: String, _ n: Int) -> String { s.count >= n ? " " + s : String(repeating: " ", count: n - s.count) + s }

// MARK: Simulation

extension SeededRandom {
    /// One trip through the simulated transport, ns: exponential with a 1 ms mean, plus a 20 ms
    /// stall with probability 0.1 %.
    mutating func delay() -> Int64 {
        let exponential = -1_000_000 * log(uniform())
        let stall: Double = uniform() < 0.001 ? 20_000_000 : 0
        return Int64(exponential + stall)
    }
}

/// A simulated device clock: pieces of constant rate starting at given host times, plus an
/// optional sinusoidal wander of the rate. Device time = piece start + (1 + rate) · elapsed
/// + wander phase; timestamps are truncated to the device's 1 µs tick.
struct SimulatedDeviceClock: Sendable {
    struct Piece: Sendable {
        var host: Int64
        var device: Double
        var rate: Double
    }

    var pieces: [Piece]
    var wanderAmplitude = 0.0
    var wanderPeriodNs = 3600e9
    var tickNs: Int64 = SyncBench.deviceTickNs

    func deviceTime(atHost t: Int64) -> Double {
        var i = pieces.count - 1
        while i > 0 && pieces[i].host > t { i -= 1 }
        let p = pieces[i]
        let elapsed = Double(t - p.host)
        var d = p.device + elapsed * (1 + p.rate)
        if wanderAmplitude != 0 {
            let w = 2 * Double.pi / wanderPeriodNs
            d += wanderAmplitude / w * (cos(w * Double(p.host)) - cos(w * Double(t)))
        }
        return d
    }

    func stamp(atHost t: Int64) -> Int64 {
        let d = Int64(deviceTime(atHost: t).rounded(.down))
        return d - ((d % tickNs) + tickNs) % tickNs
    }
}

struct ClockScenario: Sendable {
    enum Kind: Sendable { case offset, driftUp, driftDown, reset, rateSteps, wander }
    enum Transport: Sendable { case bracketed, oneWay }

    var kind: Kind
    var transport: Transport
    var duration: Int64
    var clock: SimulatedDeviceClock
    var trueSegments: Int
    var name: String

    init(kind: Kind, transport: Transport, duration: Int64) {
        self.kind = kind
        self.transport = transport
        self.duration = duration
        let boot = 5 * 3600e9 + 123_456_789  // the device booted 5 h before the run
        let rate: Double
        switch kind {
        case .offset: rate = 0
        case .driftUp: rate = 100e-6
        case .driftDown: rate = -100e-6
        case .reset: rate = 37e-6
        case .rateSteps: rate = 10e-6
        case .wander: rate = 50e-6
        }
        clock = SimulatedDeviceClock(pieces: [.init(host: 0, device: boot, rate: rate)])
        trueSegments = 1
        let label: String
        switch kind {
        case .offset: label = "offset"
        case .driftUp: label = "drift+100ppm"
        case .driftDown: label = "drift-100ppm"
        case .reset:
            label = "reset"
            // Power cycle at mid-run: the clock restarts from zero, same oscillator.
            clock.pieces.append(.init(host: duration / 2, device: 0, rate: rate))
            trueSegments = 2
        case .rateSteps:
            label = "rate-steps"
            // +20 ppm at one third, back at two thirds.
            let t1 = duration / 3
            let t2 = 2 * duration / 3
            let d1 = clock.deviceTime(atHost: t1)
            clock.pieces.append(.init(host: t1, device: d1, rate: 30e-6))
            let d2 = clock.deviceTime(atHost: t2)
            clock.pieces.append(.init(host: t2, device: d2, rate: 10e-6))
            trueSegments = 3
        case .wander:
            label = "wander"
            clock.wanderAmplitude = 0.1e-6
        }
        name = (transport == .bracketed ? "bracketed/" : "one-way/") + label
    }
}

/// Streaming least squares y = a + b·x (Welford-style updates, stable over 10⁷ points).
struct LineFit {
    private var n = 0.0
    private var meanX = 0.0
    private var meanY = 0.0
    private var sxx = 0.0
    private var sxy = 0.0

    mutating func add(x: Double, y: Double) {
        n += 1
        let dx = x - meanX
        meanX += dx / n
        meanY += (y - meanY) / n
        sxx += dx * (x - meanX)
        sxy += dx * (y - meanY)
    }

    func solve() -> (a: Double, b: Double) {
        let b = sxx > 0 ? sxy / sxx : 0
        return (meanY - b * meanX, b)
    }
}

/// |error| quantiles from a histogram with 256 bins per octave (bins at most 0.4 % wide; the
/// quantile reported is the bin's upper edge), the exact maximum, and the uncertainty coverage.
struct ErrorStats: Sendable {
    private var bins = [Int](repeating: 0, count: 64 * 256)
    private(set) var count = 0
    private(set) var max = 0.0
    private var covered = 0
    var unmapped = 0

    mutating func add(error: Double, uncertainty: Double) {
        let v = abs(error)
        count += 1
        if v > max { max = v }
        if v <= uncertainty { covered += 1 }
        bins[Self.bin(v)] += 1
    }

    /// Octave from the exponent, position within it from the significand's top 8 bits.
    static func bin(_ v: Double) -> Int {
        guard v >= 1 else { return 0 }
        let e = Swift.min(62, Int(v.exponent))
        return 1 + e * 256 + Int((v.significand - 1) * 256)
    }

    static func upperEdge(_ bin: Int) -> Double {
        guard bin > 0 else { return 1 }
        let e = (bin - 1) / 256
        let m = (bin - 1) % 256
        return Double(sign: .plus, exponent: e, significand: 1 + Double(m + 1) / 256)
    }

    var coverage: Double { count == 0 ? 0 : Double(covered) / Double(count) }

    /// Upper edge of the bin holding the p-quantile, ns (never above the maximum).
    func quantile(_ p: Double) -> Double {
        guard count > 0 else { return .nan }
        let rank = Int((p * Double(count)).rounded(.up))
        var seen = 0
        for (i, c) in bins.enumerated() {
            seen += c
            if seen >= rank { return Swift.min(max, Self.upperEdge(i)) }
        }
        return max
    }
}

/// Per-bucket error quantiles, coverage and window span (`--trace`).
struct Tracer {
    var bucketNs: Int64
    var buckets: [ErrorStats] = []
    var spans: [Double] = []
    var nextSpanCheck: Int64 = 0

    mutating func add(t: Int64, error: Double, uncertainty: Double, model: @autoclosure () -> ClockSegment?) {
        let h = Int(t / bucketNs)
        while buckets.count <= h {
            buckets.append(ErrorStats())
            spans.append(0)
        }
        buckets[h].add(error: error, uncertainty: uncertainty)
        if t >= nextSpanCheck, let line = model()?.line {
            spans[h] = Swift.max(spans[h], line.lastObserved - line.firstObserved)
            nextSpanCheck = t + Swift.min(60_000_000_000, bucketNs / 4)
        }
    }

    func print(_ name: String) {
        Swift.print("trace \(name): from(min) p50 p99 max (µs) coverage% window(s)")
        for (h, s) in buckets.enumerated() {
            Swift.print(
                String(
                    format: "  %6.0f %8.2f %8.2f %9.2f %7.2f %8.0f", Double(Int64(h) * bucketNs) / 60e9, s.quantile(0.5) / 1e3, s.quantile(0.99) / 1e3,
                    s.max / 1e3, s.coverage * 100, spans[h] / 1e9))
        }
    }
}

struct SyncResult: Sendable {
    var name: String
    var ours: ErrorStats
    var refit: ErrorStats?
    var baseline: ErrorStats
    var segments: [ClockSegment]
    var trueSegments: Int
    var held: Int
    var observations: Int
}
