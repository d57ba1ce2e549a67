import Foundation
import OperandoCore
import OperandoStore

/// Mean, minimum and maximum of one stimulus field over a response interval.
public struct FieldSummary: Sendable, Codable, Equatable {
    public var mean: Double?
    public var min: Double?
    public var max: Double?

    public init(mean: Double?, min: Double?, max: Double?) {
        self.mean = mean
        self.min = min
        self.max = max
    }
}

/// One response (a spectrum, a scan line, a frame) and the stimulus applied while it was taken.
public struct AlignmentRow: Sendable, Codable, Equatable {
    /// The response record's sequence number in its stream.
    public var sequence: UInt64
    /// The response's device time, ns, when its device has a clock.
    public var deviceTimeNs: Int64?
    /// The response interval on the common timeline (host ns, CLOCK_MONOTONIC_RAW).
    public var startNs: Int64
    public var endNs: Int64
    /// Uncertainty of the interval's placement relative to the stimulus, ns: the response's
    /// mapping uncertainty plus the largest of the stimulus samples used. Nil when one of them
    /// is unknown.
    public var uncertaintyNs: Int64?
    /// Stimulus samples inside the interval.
    public var samples: Int
    /// Per stimulus field (in `AlignmentTable.stimulusFields` order), over the samples inside.
    public var fields: [FieldSummary]
    /// ∫ I dt over the interval (C), holding each current sample until the next; nil when the
    /// stimulus has no current field (unit "A") or no sample precedes the interval's end.
    public var chargeC: Double?
    /// Stimulus events (setpoint changes, steps, …) inside the interval.
    public var stimulusEvents: Int
    /// The last stimulus event at or before the interval's end, as its message.
    public var lastStimulus: String?
}

/// The stimulus–response table of a run: `operandoctl align`.
public struct AlignmentTable: Sendable, Codable {
    public var run: String
    public var runID: String
    public var response: String
    public var stimulusStream: String
    public var stimulusFields: [Field]
    /// Host time of the run's start anchor, ns: `start_s` and `end_s` count from here.
    public var runStartHostNs: Int64
    /// Clock models used (after refitting the run's stored observations).
    public var responseClock: String
    public var stimulusClock: String
    /// How a response's interval is found.
    public var intervalRule: String
    public var rows: [AlignmentRow]

    /// Column names (with units) of `csv()`.
    public var csvHeader: [String] {
        var h = ["sequence", "device_time_ns", "start_s", "end_s", "uncertainty_us", "samples"]
        for f in stimulusFields {
            for stat in ["mean", "min", "max"] { h.append("\(f.name)_\(stat) [\(f.unit)]") }
        }
        h += ["charge [C]", "stimulus_events", "last_stimulus"]
        return h
    }

    /// The table as CSV: one line per response, times in seconds since the run's start.
    public func csv() -> String {
        var out = csvHeader.map(Self.quote).joined(separator: ",") + "\n"
        for r in rows { out += csvFields(r).joined(separator: ",") + "\n" }
        return out
    }

    /// One row's CSV fields (as written by `csv()`).
    public func csvFields(_ r: AlignmentRow) -> [String] {
        func num(_ d: Double?) -> String { d.map { String(format: "%.9g", $0) } ?? "" }
        var f = [
            String(r.sequence), r.deviceTimeNs.map(String.init) ?? "",
            String(format: "%.9f", Double(r.startNs - runStartHostNs) / 1e9), String(format: "%.9f", Double(r.endNs - runStartHostNs) / 1e9),
            r.uncertaintyNs.map { String(format: "%.3f", Double($0) / 1e3) } ?? "", String(r.samples),
        ]
        for s in r.fields { f += [num(s.mean), num(s.min), num(s.max)] }
        f += [num(r.chargeC), String(r.stimulusEvents), Self.quote(r.lastStimulus ?? "")]
        return f
    }

    static func quote(_ s: String) -> String {
        s.contains(where: { $0 == "," || $0 == "\"" || $0 == "\n" }) ? "\"" + s.replacingOccurrences(of: "\"", with: "\"\"") + "\"" : s
    }
}

/// Places every response of one stream against the stimulus of one device, on the common
/// timeline, with the device clocks refitted from the run's stored observations.
public enum Alignment {
    public struct Failure: Error, CustomStringConvertible {
        public var description: String
    }

    /// How the interval of a response is found (stated in every table).
    public static let intervalRule =
        "a response covers [its time, the next response's time), at most 1.5 nominal periods; the last one covers one nominal period. Its time is its device time mapped to the host timeline (the start of the acquisition), or its host stamp"

    public static func compute(_ reader: RunReader, response: String, stimulus device: String, clocks: RunClocks? = nil) throws -> AlignmentTable {
        let m = reader.manifest
        guard let resp = reader.stream(named: response), resp.kind != .events else {
            let names = m.streams.filter { $0.kind != .events && !$0.name.hasSuffix("/clock") }.map(\.name)
            throw Failure(description: "run \(m.name) has no data stream \"\(response)\"; its data streams: \(names.joined(separator: ", "))")
        }
        guard let stim = m.streams.first(where: { $0.device == device && $0.kind == .samples && $0.name != "\(device)/clock" }) else {
            let devices = Set(m.streams.filter { $0.kind == .samples && !$0.name.hasSuffix("/clock") }.map(\.device)).sorted()
            throw Failure(description: "device \"\(device)\" has no sample stream in run \(m.name) to use as the stimulus; devices with one: \(devices.joined(separator: ", "))")
        }
        let events = reader.stream(named: "\(device)/events")
        let clocks = try clocks ?? RunClocks.fit(reader)
        let respClock = clocks.device(resp.device)
        let stimClock = clocks.device(device)
        func place(_ clock: DeviceClockFit?, _ deviceTime: Int64?, _ host: HostInstant) -> TimelineInstant {
            clock?.map(deviceTime: deviceTime, hostTime: host) ?? TimelineInstant(host: host, uncertaintyNs: nil)
        }

        var responses: [(sequence: UInt64, device: Int64?, at: TimelineInstant)] = []
        var samples: [(t: Int64, u: Int64?, values: [Double])] = []
        var stimuli: [(t: Int64, message: String)] = []
        let width = max(1, stim.fields.count)
        let rowBytes = stim.bytesPerItem
        let period = stim.nominalRateHz > 0 ? Int64(1e9 / stim.nominalRateHz) : 0
        var wanted: Set<UInt32> = [resp.id, stim.id]
        if let events { wanted.insert(events.id) }
        let decoder = JSONDecoder()
        try reader.records(streams: wanted) { r in
            let id = r.header.streamID
            if id == resp.id {
                responses.append((r.header.sequence, r.header.deviceTime, place(respClock, r.header.deviceTime, r.header.hostTime)))
            }
            if id == stim.id {
                let at = place(stimClock, r.header.deviceTime, r.header.hostTime)
                let rows = rowBytes > 0 ? r.payload.count / rowBytes : 0
                let values = stim.elementType.values(r.payload[...])
                for k in 0..<rows {
                    samples.append((at.host.nanoseconds + Int64(k) * period, at.uncertaintyNs, Array(values[(k * width)..<min(values.count, (k + 1) * width)])))
                }
            }
            if let events, id == events.id, let e = try? decoder.decode(Event.self, from: Data(r.payload)), e.kind == .stimulus {
                let t = e.deviceTime != nil ? place(stimClock, e.deviceTime, e.hostTime).host : e.hostTime
                stimuli.append((t.nanoseconds, e.message))
            }
        }
        responses.sort { $0.sequence < $1.sequence }
        samples.sort { $0.t < $1.t }
        stimuli.sort { $0.t < $1.t }
        let currentField = stim.fields.firstIndex { $0.unit == "A" }
        let respPeriod = resp.nominalRateHz > 0 ? Int64(1e9 / resp.nominalRateHz) : 1_000_000_000

        /// Index of the first element of `a` with key ≥ t.
        func lowerBound<T>(_ a: [T], _ t: Int64, _ key: (T) -> Int64) -> Int {
            var lo = 0
            var hi = a.count
            while lo < hi {
                let mid = (lo + hi) / 2
                if key(a[mid]) < t { lo = mid + 1 } else { hi = mid }
            }
            return lo
        }

        var rows: [AlignmentRow] = []
        rows.reserveCapacity(responses.count)
        for (i, r) in responses.enumerated() {
            let start = r.at.host.nanoseconds
            var end = start + respPeriod
            if i + 1 < responses.count {
                end = min(max(start, responses[i + 1].at.host.nanoseconds), start + respPeriod * 3 / 2)
            }
            let first = lowerBound(samples, start) { $0.t }
            let last = lowerBound(samples, end) { $0.t }  // exclusive
            var sums = [Double](repeating: 0, count: width)
            var mins = [Double](repeating: .infinity, count: width)
            var maxs = [Double](repeating: -.infinity, count: width)
            var u: Int64? = r.at.uncertaintyNs
            var stimU: Int64 = 0
            var stimUKnown = true
            for s in samples[first..<last] {
                for (k, v) in s.values.enumerated() where k < width {
                    sums[k] += v
                    mins[k] = Swift.min(mins[k], v)
                    maxs[k] = Swift.max(maxs[k], v)
                }
                if let su = s.u { stimU = Swift.max(stimU, su) } else { stimUKnown = false }
            }
            let n = last - first
            // Charge: each current sample holds until the next one (or the interval's end).
            var charge: Double?
            if let c = currentField {
                let held = first > 0 ? first - 1 : first
                if held < last {
                    var q = 0.0
                    for j in held..<last {
                        let from = Swift.max(samples[j].t, start)
                        let to = Swift.min(j + 1 < samples.count ? samples[j + 1].t : end, end)
                        if to > from, c < samples[j].values.count { q += samples[j].values[c] * Double(to - from) / 1e9 }
                    }
                    charge = q
                    if held < first, let su = samples[held].u { stimU = Swift.max(stimU, su) } else if held < first { stimUKnown = false }
                }
            }
            if let ru = u { u = stimUKnown ? ru + stimU : nil }
            let e0 = lowerBound(stimuli, start) { $0.t }
            let e1 = lowerBound(stimuli, end) { $0.t }
            rows.append(AlignmentRow(
                sequence: r.sequence, deviceTimeNs: r.device, startNs: start, endNs: end, uncertaintyNs: u, samples: n,
                fields: (0..<width).map { k in
                    n > 0 ? FieldSummary(mean: sums[k] / Double(n), min: mins[k], max: maxs[k]) : FieldSummary(mean: nil, min: nil, max: nil)
                },
                chargeC: charge, stimulusEvents: e1 - e0, lastStimulus: e1 > 0 ? stimuli[e1 - 1].message : nil))
        }
        return AlignmentTable(
            run: m.name, runID: m.id, response: response, stimulusStream: stim.name, stimulusFields: stim.fields,
            runStartHostNs: m.startAnchor.host.nanoseconds,
            responseClock: (respClock?.model ?? .none).rawValue, stimulusClock: (stimClock?.model ?? .none).rawValue,
            intervalRule: intervalRule, rows: rows)
    }
}
