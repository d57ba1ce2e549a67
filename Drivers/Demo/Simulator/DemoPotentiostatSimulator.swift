import Foundation
import OperandoCore
import OperandoVirtualCell

/// The device side of the demo potentiostat (see Drivers/Demo/PROTOCOL.md). Written from the
/// protocol description, not from the driver.
public final class DemoPotentiostatSimulator: @unchecked Sendable {
    public let serialNumber: String
    public let firmware = "1.2.0"
    private let cell: VirtualCell
    private let clock: any HostClock
    /// The potentiostat's own clock (stamps in data lines and `TIME?` replies).
    public let deviceClock: SimulatedDeviceClock
    private var noise: NoiseSource

    private var rateHz = 10.0
    private var currentMagnitude = 0.0025
    private var sign = 1.0
    private var running = false
    private var nextSample: HostInstant
    private var lastAdvance: HostInstant
    private var input: [UInt8] = []

    public init(
        cell: VirtualCell, clock: any HostClock, serialNumber: String = "PS-0001",
        deviceClock: SimulatedDeviceClock = SimulatedDeviceClock(driftPPM: 25, offsetNs: 1_234_567_000_000), seed: UInt64 = 1
    ) {
        self.cell = cell
        self.clock = clock
        self.serialNumber = serialNumber
        self.deviceClock = deviceClock
        let now = clock.now()
        nextSample = now
        lastAdvance = now
        noise = NoiseSource(seed: seed)
    }

    /// The device clock at `t` in whole µs (what the device prints).
    private func deviceMicroseconds(_ t: HostInstant) -> Int64 { deviceClock.deviceNanoseconds(at: t) / 1000 }

    /// Serves the device end of `link` until `shouldStop` returns true or the link goes away.
    public func serve(_ link: any ByteStreamTransport, shouldStop: () -> Bool) {
        var buffer = [UInt8](repeating: 0, count: 4096)
        while !shouldStop() {
            do {
                let timeout: Duration = running ? .milliseconds(max(1, Int(500 / rateHz))) : .milliseconds(50)
                let read = try buffer.withUnsafeMutableBytes { try link.read(into: $0, timeout: timeout) }
                if read.count > 0 { try handleInput(buffer[0..<read.count], link) }
                if running { try emitSamples(link) }
            } catch {
                return
            }
        }
    }

    private func handleInput(_ bytes: ArraySlice<UInt8>, _ link: any ByteStreamTransport) throws {
        for byte in bytes {
            if byte == UInt8(ascii: "\n") {
                let line = String(decoding: input, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
                input.removeAll()
                try link.write(respond(to: line) + "\n", timeout: .seconds(1))
            } else if input.count < 256 {
                input.append(byte)
            }
        }
    }

    private func respond(to line: String) -> String {
        let parts = line.split(separator: " ")
        switch parts.first.map(String.init) {
        case "*IDN?": return "OPERANDO,DEMO-PSTAT,\(serialNumber),\(firmware)"
        case "TIME?": return "T \(deviceMicroseconds(clock.now()))"
        case "GPIO":
            guard parts.count == 3, let pin = Int(parts[1]), (0...3).contains(pin), parts[2] == "0" || parts[2] == "1" else { return "ERR GPIO wants a pin 0..3 and 0 or 1" }
            return "OK \(deviceMicroseconds(clock.now()))"
        case "RATE":
            guard parts.count == 2, let hz = Double(parts[1]), hz >= 1, hz <= 10000 else { return "ERR RATE wants 1..10000 Hz" }
            rateHz = hz
            return "OK"
        case "CURRENT":
            guard parts.count == 2, let a = Double(parts[1]), a > 0, a <= 0.01 else { return "ERR CURRENT wants 0 < A <= 0.01" }
            currentMagnitude = a
            return "OK"
        case "START":
            let now = clock.now()
            running = true
            nextSample = now
            lastAdvance = now
            pendingStimulus = "start"
            return "OK"
        case "STOP":
            running = false
            cell.advance(current: 0, hostSeconds: 0)
            return "OK"
        default:
            return "ERR unknown command \(line.prefix(40))"
        }
    }

    private var pendingStimulus: String?

    private func emitSamples(_ link: any ByteStreamTransport) throws {
        let now = clock.now()
        var out = ""
        let period = Int64(1e9 / rateHz)
        // Catch up without flooding: at most one second of samples per call.
        var emitted = 0
        while nextSample <= now && emitted < Int(rateHz) + 1 {
            let t = nextSample
            let dt = t.seconds(since: lastAdvance)
            lastAdvance = t
            var snap = cell.advance(current: sign * currentMagnitude, hostSeconds: max(0, dt))
            if sign > 0 && snap.voltage >= cell.parameters.upperCutoffV {
                sign = -1
                pendingStimulus = "upper-cutoff"
                snap = cell.advance(current: -currentMagnitude, hostSeconds: 0)
            } else if sign < 0 && snap.voltage <= cell.parameters.lowerCutoffV {
                sign = 1
                cell.completeCycle()
                pendingStimulus = "lower-cutoff"
                snap = cell.advance(current: currentMagnitude, hostSeconds: 0)
            }
            let us = deviceMicroseconds(t)
            if let reason = pendingStimulus {
                out += "S \(us) \(String(format: "%.6e", sign * currentMagnitude)) \(reason)\n"
                pendingStimulus = nil
            }
            let e = snap.voltage + noise.gaussian() * 50e-6
            let i = snap.current + noise.gaussian() * 1e-7
            out += "D \(us) \(String(format: "%.6f", e)) \(String(format: "%.6e", i)) \(snap.cycle)\n"
            nextSample = nextSample.advanced(byNanoseconds: period)
            emitted += 1
        }
        if nextSample <= now { nextSample = now }  // fell behind by more than a second: skip ahead
        if !out.isEmpty { try link.write(out, timeout: .seconds(1)) }
    }
}
