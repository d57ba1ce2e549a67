import Foundation
import OperandoCore
import OperandoIO
import OperandoTestSupport
import OperandoVirtualCell
import PalmSensSimulator
import Synchronization
import XCTest


/// One variable of a data package, decoded by the test's own reading of the grammar.
struct PSSimVar: Equatable {
    var type: String
    var value: Double
    var status: Int?
    var range: Int?
}

/// `P` + `;`-separated variables: 2-letter type, 7 hex digits of value + 2^27, SI prefix, then
/// optional `,1X` (status) and `,2XX` (range).
func psSimDecodePackage(_ line: String) -> [PSSimVar]? {
    guard line.first == "P" else { return nil }
    var result: [PSSimVar] = []
    for field in line.dropFirst().split(separator: ";") {
        let parts = field.split(separator: ",", omittingEmptySubsequences: false)
        let body = Array(parts[0])
        guard body.count == 10 else { return nil }
        let type = String(body[0..<2])
        let digits = String(body[2..<9])
        var value: Double
        if String(body[2..<10]) == "     nan" {
            value = .nan
        } else {
            guard let raw = Int(digits, radix: 16) else { return nil }
            let factors: [Character: Double] = [
                "a": 1e-18, "f": 1e-15, "p": 1e-12, "n": 1e-9, "u": 1e-6, "m": 1e-3, " ": 1, "k": 1e3, "M": 1e6,
                "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18, "i": 1,
            ]
            guard let f = factors[body[9]] else { return nil }
            value = Double(raw - (1 << 27)) * f
        }
        var v = PSSimVar(type: type, value: value)
        for meta in parts.dropFirst() {
            if meta.count == 2, meta.first == "1" { v.status = Int(meta.dropFirst(), radix: 16) }
            if meta.count == 3, meta.first == "2" { v.range = Int(meta.dropFirst(), radix: 16) }
        }
        result.append(v)
    }
    return result
}

/// A simulator served on its own thread over an in-memory cable; the test is the host.
final class PSSimBench {
    let clock = ManualClock()
    let cell: VirtualCell
    let link: InMemoryLink
    let simulator: PalmSensSimulator
    private let host: any ByteStreamTransport
    private let stopFlag = StopFlag()
    private var thread: IOThread?
    private var received: [UInt8] = []

    init(cell: VirtualCell = VirtualCell(), model: PalmSensCellModel.Parameters = PalmSensCellModel.Parameters(), maxScriptBytes: Int = 16_384) {
        self.cell = cell
        link = InMemoryLink(clock: clock)
        host = link.hostByteStream
        simulator = PalmSensSimulator(cell: cell, clock: clock, seed: 42, model: model, maxScriptBytes: maxScriptBytes)
        let device = link.deviceByteStream
        let simulator = simulator
        let stop = stopFlag
        thread = IOThread(name: "palmsens-sim-test") { simulator.serve(device, shouldStop: { stop.isSet }) }
    }

    func stop() {
        stopFlag.set()
        thread?.join()
        thread = nil
    }

    func send(_ text: String) {
        var bytes = Array(text.utf8)
        bytes.withUnsafeMutableBytes { try! host.write(UnsafeRawBufferPointer($0), timeout: .seconds(5)) }
    }

    /// A complete line already received, if any (without its `\n`).
    private func takeLine() -> String? {
        guard let end = received.firstIndex(of: 0x0A) else { return nil }
        let text = String(decoding: received[..<end], as: UTF8.self)
        received.removeFirst(end + 1)
        return text
    }

    /// Reads what has arrived within `timeout`; true when bytes came.
    @discardableResult
    private func poll(_ timeout: Duration) -> Bool {
        var buffer = [UInt8](repeating: 0, count: 65_536)
        let n = buffer.withUnsafeMutableBytes { (try? host.read(into: $0, timeout: timeout))?.count ?? 0 }
        received += buffer[0..<n]
        return n > 0
    }

    /// The next line, without moving the clock (a hang guard, not a timing assertion).
    func line(file: StaticString = #filePath, line: UInt = #line) -> String {
        for _ in 0..<100 {
            if let l = takeLine() { return l }
            poll(.milliseconds(100))
        }
        XCTFail("no complete line; have \(String(decoding: received, as: UTF8.self).debugDescription)", file: file, line: line)
        return "<none>"
    }

    /// Lines until the device has gone quiet for `quiet` (used only to show nothing more came).
    func drain(quiet: Duration = .milliseconds(200)) -> [String] {
        var lines: [String] = []
        while true {
            while let l = takeLine() { lines.append(l) }
            if !poll(quiet) { break }
        }
        while let l = takeLine() { lines.append(l) }
        return lines
    }

    /// Sends `e`, the script and the empty line, then collects the reply through the terminating
    /// empty line (or an error line), advancing the clock by `step` device seconds (growing to
    /// `maxStep` while nothing arrives) whenever the device has nothing to say. `onLine` may act
    /// mid-run (return true to stop collecting).
    func run(
        _ script: String, step: Double = 0.05, maxStep: Double = 60, limit: Double = 1e7,
        onLine: ((String, PSSimBench) -> Bool)? = nil, file: StaticString = #filePath, line: UInt = #line
    ) -> [String] {
        var body = script.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        while body.last?.trimmingCharacters(in: .whitespaces).isEmpty == true { body.removeLast() }
        if body.first == "e" { body.removeFirst() }
        send("e\n" + body.joined(separator: "\n") + "\n\n")
        var lines: [String] = []
        var advanced = 0.0
        var currentStep = step
        var idle = 0
        while advanced <= limit {
            if let l = takeLine() {
                lines.append(l)
                currentStep = step
                idle = 0
                if l.isEmpty || l.hasPrefix("!") { return lines }
                if let onLine, onLine(l, self) { return lines }
                continue
            }
            if poll(.milliseconds(2)) { continue }
            idle += 1
            if idle < 3 { continue }
            clock.advance(seconds: currentStep)
            advanced += currentStep
            currentStep = min(maxStep, currentStep * 1.5)
        }
        XCTFail("script did not finish within \(limit) s of device time; last lines \(lines.suffix(5))", file: file, line: line)
        return lines
    }

    func advance(seconds: Double) { clock.advance(seconds: seconds) }
}

/// Packages (decoded) from a run's lines.
func psSimPackages(_ lines: [String]) -> [[PSSimVar]] { lines.compactMap(psSimDecodePackage) }

/// Checks the marker structure: every `M` closed by `*`, `L` by `+`, `C` by `-`, ends with "".
func psSimAssertWellFormed(_ lines: [String], file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertEqual(lines.first, "e", file: file, line: line)
    XCTAssertEqual(lines.last, "", "run did not end with the empty line: \(lines.suffix(3))", file: file, line: line)
    var stack: [Character] = []
    for l in lines.dropFirst().dropLast() {
        guard let c = l.first else { XCTFail("empty line mid-run", file: file, line: line); return }
        switch c {
        case "M", "C":
            XCTAssertEqual(l.count, 5, file: file, line: line)
            stack.append(c)
        case "L": stack.append(c)
        case "*": XCTAssertEqual(stack.popLast(), "M", file: file, line: line)
        case "-": XCTAssertEqual(stack.popLast(), "C", file: file, line: line)
        case "+": XCTAssertEqual(stack.popLast(), "L", file: file, line: line)
        case "P": XCTAssertNotNil(psSimDecodePackage(l), "bad package \(l)", file: file, line: line)
        case "T": break
        default: XCTFail("unexpected line \(l)", file: file, line: line)
        }
    }
    XCTAssertTrue(stack.isEmpty, "unclosed \(stack)", file: file, line: line)
}
