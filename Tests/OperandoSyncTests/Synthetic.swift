import Foundation
import OperandoCore
import OperandoSync

typealias TestRandom = SeededRandom

extension SeededRandom {
    /// Exponential delay with the given mean, ns, plus a `stall` with probability `stallProbability`.
    mutating func delay(meanNs: Double = 1_000_000, stallNs: Double = 20_000_000, stallProbability: Double = 0.001) -> Int64 {
        let e = -meanNs * log(uniform())
        return Int64(e + (uniform() < stallProbability ? stallNs : 0))
    }
}

/// A device clock with known truth: pieces of constant rate; device ns = device at the piece's
/// start + (1 + rate) × host ns elapsed since it.
struct TestClock {
    struct Piece {
        var host: Int64
        var device: Int64
        var rate: Double
    }

    var pieces: [Piece]

    init(device0: Int64 = 3_600_000_000_000, rate: Double) {
        pieces = [Piece(host: 0, device: device0, rate: rate)]
    }

    /// From host time `host` on, the clock runs at `rate`.
    mutating func changeRate(atHost host: Int64, to rate: Double) {
        pieces.append(Piece(host: host, device: device(atHost: host), rate: rate))
    }

    /// At host time `host` the device clock restarts from `device`.
    mutating func reset(atHost host: Int64, to device: Int64, rate: Double? = nil) {
        pieces.append(Piece(host: host, device: device, rate: rate ?? pieces.last!.rate))
    }

    func piece(atHost t: Int64) -> Piece { pieces.last { $0.host <= t } ?? pieces[0] }

    func device(atHost t: Int64) -> Int64 {
        let p = piece(atHost: t)
        return p.device + Int64((Double(t - p.host) * (1 + p.rate)).rounded())
    }

    /// The true host time of a device time read in the piece that starts at or before `near`.
    func host(ofDevice d: Int64, near: Int64) -> Double {
        let p = piece(atHost: near)
        return Double(p.host) + Double(d - p.device) / (1 + p.rate)
    }
}

/// `count` bursts of `perBurst` exchanges every `everyNs`, starting at host `start`.
func bracketedExchanges(
    clock: TestClock, start: Int64 = 0, bursts count: Int, perBurst: Int = 8, everyNs: Int64 = 5_000_000_000, random: inout TestRandom,
    delay: (inout TestRandom) -> Int64
) -> [(exchange: BracketedExchange, truth: Int64)] {
    var out: [(BracketedExchange, Int64)] = []
    for b in 0..<count {
        var t = start + Int64(b) * everyNs
        for _ in 0..<perBurst {
            let d1 = delay(&random)
            let d2 = delay(&random)
            let read = t + d1
            out.append(
                (BracketedExchange(hostBefore: .init(nanoseconds: t), deviceTime: clock.device(atHost: read), hostAfter: .init(nanoseconds: read + d2)), read))
            t = read + d2 + 1_000_000
        }
    }
    return out
}

/// `count` samples every `periodNs` from host `start`, delivered in order after `delay`.
func oneWaySamples(
    clock: TestClock, start: Int64 = 5_000_000, count: Int, periodNs: Int64 = 10_000_000, random: inout TestRandom, delay: (inout TestRandom) -> Int64
) -> [(sample: OneWaySample, truth: Int64)] {
    var out: [(OneWaySample, Int64)] = []
    out.reserveCapacity(count)
    var last = Int64.min
    for k in 0..<count {
        let t = start + Int64(k) * periodNs
        let arrival = max(t + delay(&random), last)
        last = arrival
        out.append((OneWaySample(deviceTime: clock.device(atHost: t), hostArrival: .init(nanoseconds: arrival)), t))
    }
    return out
}
