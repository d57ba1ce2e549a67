import Foundation

/// A MethodSCRIPT error as the simulator reports it: `!XXXX` plus, for script errors, the line.
///
/// The real code table is in the MethodSCRIPT manual (not public in the examples repository);
/// only `0006` (abort with no script running) is public. The other codes are this simulator's
/// choice, kept in one place.
public struct MethodScriptError: Error, Equatable, Sendable {
    public var code: UInt16
    /// 1-based line within the script (the line after `e` is line 1), or nil.
    public var line: Int?

    public init(_ code: UInt16, line: Int? = nil) {
        self.code = code
        self.line = line
    }

    /// `!XXXX` or `!XXXX: Line N, Col 1`.
    public var wire: String {
        let hex = String(format: "%04X", code)
        if let line { return "!\(hex): Line \(line), Col 1" }
        return "!\(hex)"
    }

    public static let unknownHostCommand: UInt16 = 0x0001
    public static let noScriptRunning: UInt16 = 0x0006
    public static let unknownCommand: UInt16 = 0x4001
    public static let wrongArgumentCount: UInt16 = 0x4002
    public static let invalidArgument: UInt16 = 0x4003
    public static let unknownVariable: UInt16 = 0x4004
    public static let blockStructure: UInt16 = 0x4005
    public static let scriptTooLong: UInt16 = 0x4006
    public static let duplicateVariable: UInt16 = 0x4007
    public static let invalidValueAtRuntime: UInt16 = 0x4008
}

/// An argument: a literal (`100m`, `-500m`, `36i`, `0x1E`, `0b101`) or a variable name.
enum MSOperand: Equatable, Sendable {
    case literal(Double, isInteger: Bool)
    case variable(String)
}

enum MSComparison: String, Sendable {
    case eq = "==", ne = "!=", lt = "<", le = "<=", gt = ">", ge = ">="
}

struct MSCondition: Sendable {
    var lhs: MSOperand
    var op: MSComparison
    var rhs: MSOperand
}

enum MSArith: Sendable { case add, sub, mul, div }

/// A measurement loop's technique and arguments.
enum MSTechnique: Sendable {
    case ocp(e: String, interval: MSOperand, run: MSOperand)
    case ca(e: String, i: String, potential: MSOperand, interval: MSOperand, run: MSOperand)
    case cp(e: String, i: String, current: MSOperand, interval: MSOperand, run: MSOperand)
    case lsv(e: String, i: String, begin: MSOperand, end: MSOperand, step: MSOperand, rate: MSOperand)
    case cv(e: String, i: String, begin: MSOperand, v1: MSOperand, v2: MSOperand, step: MSOperand, rate: MSOperand, scans: Int)
    case eis(f: String, zr: String, zi: String, amplitude: MSOperand, fStart: MSOperand, fEnd: MSOperand, points: MSOperand, dc: MSOperand)
}

enum MSOp: Sendable {
    case declare(String)
    case store(String, MSOperand, type: String)
    case copy(from: MSOperand, to: String)
    case arith(MSArith, String, MSOperand)
    case setPgstatMode(MSOperand)
    case setMaxBandwidth(MSOperand)
    case setRange(type: String, MSOperand)
    case setRangeMinmax(type: String, MSOperand, MSOperand)
    case setAutoranging(type: String, MSOperand, MSOperand)
    case setE(MSOperand)
    case setI(MSOperand)
    case cellOn
    case cellOff
    case wait(MSOperand)
    case timerStart
    case timerGet(String)
    case pckStart
    case pckAdd(MSOperand)
    case pckEnd
    case sendString(String, interpolate: Bool)
    case setGpioCfg(MSOperand, MSOperand)
    case setGpio(MSOperand)
    case setGpioMask(MSOperand, MSOperand)
    case getGpio(String)
    case noop
    /// `loop cond`; `end` is the index of the matching `endloop`.
    case loop(MSCondition, end: Int)
    case measLoop(MSTechnique, end: Int)
    /// `endloop`; `start` is the index of the `loop`/`meas_loop_*`.
    case endLoop(start: Int)
    case breakLoop
    /// `if`/`elseif` with the index of the next `elseif`/`else`/`endif` (where a false condition
    /// goes) and of the `endif` (where falling out of the previous body goes, for `elseif`).
    case branch(MSCondition, next: Int, end: Int, isElseIf: Bool)
    /// `else`, with the index of its `endif`.
    case elseBranch(end: Int)
    case endIf
    case onFinished
}

struct MSInstruction: Sendable {
    var op: MSOp
    var line: Int
}

/// A parsed script: instructions (with resolved jumps), and where `on_finished:` begins.
struct MSProgram: Sendable {
    var instructions: [MSInstruction]
    var onFinished: Int?

    /// Parses a literal number with an optional SI prefix or `i` (integer) suffix.
    static func literal(_ token: String) -> MSOperand? {
        var t = Substring(token)
        if t.hasPrefix("0x") || t.hasPrefix("0X") {
            guard let v = UInt64(t.dropFirst(2), radix: 16) else { return nil }
            return .literal(Double(v), isInteger: true)
        }
        if t.hasPrefix("0b") || t.hasPrefix("0B") {
            guard let v = UInt64(t.dropFirst(2), radix: 2) else { return nil }
            return .literal(Double(v), isInteger: true)
        }
        guard let first = t.first, first.isNumber || first == "-" || first == "+" || first == "." else { return nil }
        var factor = 1.0
        var isInteger = false
        if let last = t.last, !last.isNumber, last != "." {
            switch last {
            case "a": factor = 1e-18
            case "f": factor = 1e-15
            case "p": factor = 1e-12
            case "n": factor = 1e-9
            case "u": factor = 1e-6
            case "m": factor = 1e-3
            case "k": factor = 1e3
            case "M": factor = 1e6
            case "G": factor = 1e9
            case "T": factor = 1e12
            case "P": factor = 1e15
            case "E": factor = 1e18
            case "i": isInteger = true
            default: return nil
            }
            t = t.dropLast()
        }
        guard !t.isEmpty, t.allSatisfy({ $0.isNumber || $0 == "-" || $0 == "+" || $0 == "." }), let v = Double(t) else {
            return nil
        }
        return .literal(v * factor, isInteger: isInteger)
    }

    static func isName(_ s: String) -> Bool {
        guard let f = s.first, f.isLetter || f == "_" else { return false }
        return s.allSatisfy { $0.isLetter || $0.isNumber || $0 == "_" } && s.count <= 32
    }

    static let variableTypes: Set<String> = [
        "aa", "ab", "ac", "ad", "ae", "af", "ag", "ah", "ai", "as", "at", "au", "av", "aw", "ax", "ay", "az",
        "ba", "bb", "ca", "cb", "cc", "cd", "ce", "cf", "cg", "ch", "ci", "cj", "ck",
        "da", "db", "dc", "dd", "ea", "eb", "ec", "ed", "ee", "ef", "eg",
        "ha", "hb", "hc", "hd", "ia", "ib", "ic", "id", "ja", "jb", "jc", "jd",
    ]

    /// Splits a line into tokens, honouring a quoted string (with an optional `f` prefix) as one
    /// token, and dropping a `#` comment outside quotes.
    static func tokenize(_ line: String) -> [String]? {
        var tokens: [String] = []
        var current = ""
        var inQuotes = false
        for ch in line {
            if inQuotes {
                current.append(ch)
                if ch == "\"" { inQuotes = false }
                continue
            }
            switch ch {
            case "#": if !current.isEmpty { tokens.append(current) }; return tokens
            case " ", "\t", "\r": if !current.isEmpty { tokens.append(current); current = "" }
            case "\"": inQuotes = true; current.append(ch)
            default: current.append(ch)
            }
        }
        if inQuotes { return nil }
        if !current.isEmpty { tokens.append(current) }
        return tokens
    }

    /// Parses the script lines (without the leading `e` and the terminating empty line).
    static func parse(_ lines: [String]) throws(MethodScriptError) -> MSProgram {
        var program = MSProgram(instructions: [], onFinished: nil)
        var declared: Set<String> = []
        // Open blocks: (instruction index, kind) where kind is "loop" or "if".
        var blocks: [(index: Int, isLoop: Bool, branches: [Int])] = []

        for (n, raw) in lines.enumerated() {
            let lineNo = n + 1
            guard let tokens = tokenize(raw) else { throw MethodScriptError(MethodScriptError.invalidArgument, line: lineNo) }
            guard let command = tokens.first else { continue }
            let args = Array(tokens.dropFirst())
            func fail(_ code: UInt16) -> MethodScriptError { MethodScriptError(code, line: lineNo) }
            func count(_ range: ClosedRange<Int>) throws(MethodScriptError) {
                if !range.contains(args.count) { throw fail(MethodScriptError.wrongArgumentCount) }
            }
            func operand(_ token: String) throws(MethodScriptError) -> MSOperand {
                if let lit = literal(token) { return lit }
                guard isName(token) else { throw fail(MethodScriptError.invalidArgument) }
                guard declared.contains(token) else { throw fail(MethodScriptError.unknownVariable) }
                return .variable(token)
            }
            func variable(_ token: String) throws(MethodScriptError) -> String {
                guard isName(token) else { throw fail(MethodScriptError.invalidArgument) }
                guard declared.contains(token) else { throw fail(MethodScriptError.unknownVariable) }
                return token
            }
            func varType(_ token: String) throws(MethodScriptError) -> String {
                guard variableTypes.contains(token) else { throw fail(MethodScriptError.invalidArgument) }
                return token
            }
            func condition() throws(MethodScriptError) -> MSCondition {
                try count(3...3)
                guard let op = MSComparison(rawValue: args[1]) else { throw fail(MethodScriptError.invalidArgument) }
                return MSCondition(lhs: try operand(args[0]), op: op, rhs: try operand(args[2]))
            }
            var op: MSOp
            switch command {
            case "var":
                try count(1...1)
                guard isName(args[0]) else { throw fail(MethodScriptError.invalidArgument) }
                guard !declared.contains(args[0]) else { throw fail(MethodScriptError.duplicateVariable) }
                declared.insert(args[0])
                op = .declare(args[0])
            case "store_var":
                try count(3...3)
                op = .store(try variable(args[0]), try operand(args[1]), type: try varType(args[2]))
            case "copy_var":
                try count(2...2)
                op = .copy(from: try operand(args[0]), to: try variable(args[1]))
            case "add_var", "sub_var", "mul_var", "div_var":
                try count(2...2)
                let kind: MSArith = command == "add_var" ? .add : command == "sub_var" ? .sub : command == "mul_var" ? .mul : .div
                op = .arith(kind, try variable(args[0]), try operand(args[1]))
            case "set_pgstat_mode": try count(1...1); op = .setPgstatMode(try operand(args[0]))
            case "set_max_bandwidth": try count(1...1); op = .setMaxBandwidth(try operand(args[0]))
            case "set_range": try count(2...2); op = .setRange(type: try varType(args[0]), try operand(args[1]))
            case "set_range_minmax":
                try count(3...3)
                op = .setRangeMinmax(type: try varType(args[0]), try operand(args[1]), try operand(args[2]))
            case "set_autoranging":
                try count(3...3)
                op = .setAutoranging(type: try varType(args[0]), try operand(args[1]), try operand(args[2]))
            case "set_e": try count(1...1); op = .setE(try operand(args[0]))
            case "set_i": try count(1...1); op = .setI(try operand(args[0]))
            case "cell_on": try count(0...1); op = .cellOn
            case "cell_off": try count(0...0); op = .cellOff
            case "wait": try count(1...1); op = .wait(try operand(args[0]))
            case "timer_start": try count(0...0); op = .timerStart
            case "timer_get": try count(1...1); op = .timerGet(try variable(args[0]))
            case "pck_start": try count(0...0); op = .pckStart
            case "pck_add": try count(1...1); op = .pckAdd(.variable(try variable(args[0])))
            case "pck_end": try count(0...0); op = .pckEnd
            case "send_string":
                try count(1...1)
                var s = Substring(args[0])
                var interpolate = false
                if s.hasPrefix("f\"") { interpolate = true; s = s.dropFirst() }
                guard s.count >= 2, s.first == "\"", s.last == "\"" else { throw fail(MethodScriptError.invalidArgument) }
                op = .sendString(String(s.dropFirst().dropLast()), interpolate: interpolate)
            case "set_gpio_cfg": try count(2...2); op = .setGpioCfg(try operand(args[0]), try operand(args[1]))
            case "set_gpio": try count(1...1); op = .setGpio(try operand(args[0]))
            case "set_gpio_msk": try count(2...2); op = .setGpioMask(try operand(args[0]), try operand(args[1]))
            case "get_gpio": try count(1...1); op = .getGpio(try variable(args[0]))
            case "set_gpio_pullup", "set_pgstat_chan", "set_acquisition_frac_autoadjust", "set_script_output":
                try count(1...2)
                op = .noop
            case "loop":
                op = .loop(try condition(), end: -1)
                blocks.append((program.instructions.count, true, []))
            case "meas_loop_ocp", "meas_loop_ca", "meas_loop_cp", "meas_loop_lsv", "meas_loop_cv", "meas_loop_eis":
                op = .measLoop(try technique(command, args, operand: operand, variable: variable, fail: fail), end: -1)
                blocks.append((program.instructions.count, true, []))
            case "endloop":
                try count(0...0)
                guard let open = blocks.popLast(), open.isLoop else { throw fail(MethodScriptError.blockStructure) }
                let here = program.instructions.count
                switch program.instructions[open.index].op {
                case .loop(let c, _): program.instructions[open.index].op = .loop(c, end: here)
                case .measLoop(let t, _): program.instructions[open.index].op = .measLoop(t, end: here)
                default: break
                }
                op = .endLoop(start: open.index)
            case "breakloop":
                try count(0...0)
                guard blocks.contains(where: { $0.isLoop }) else { throw fail(MethodScriptError.blockStructure) }
                op = .breakLoop
            case "if":
                op = .branch(try condition(), next: -1, end: -1, isElseIf: false)
                blocks.append((program.instructions.count, false, [program.instructions.count]))
            case "elseif", "else":
                guard var open = blocks.popLast(), !open.isLoop, let previous = open.branches.last,
                    case .branch(let c, _, _, let e) = program.instructions[previous].op
                else { throw fail(MethodScriptError.blockStructure) }
                let here = program.instructions.count
                program.instructions[previous].op = .branch(c, next: here, end: -1, isElseIf: e)
                if command == "elseif" {
                    op = .branch(try condition(), next: -1, end: -1, isElseIf: true)
                } else {
                    try count(0...0)
                    op = .elseBranch(end: -1)
                }
                open.branches.append(here)
                blocks.append(open)
            case "endif":
                try count(0...0)
                guard let open = blocks.popLast(), !open.isLoop else { throw fail(MethodScriptError.blockStructure) }
                let here = program.instructions.count
                for b in open.branches {
                    switch program.instructions[b].op {
                    case .branch(let c, let next, _, let e):
                        program.instructions[b].op = .branch(c, next: next < 0 ? here : next, end: here, isElseIf: e)
                    case .elseBranch: program.instructions[b].op = .elseBranch(end: here)
                    default: break
                    }
                }
                op = .endIf
            case "on_finished:":
                try count(0...0)
                guard blocks.isEmpty, program.onFinished == nil else { throw fail(MethodScriptError.blockStructure) }
                program.onFinished = program.instructions.count
                op = .onFinished
            default:
                throw fail(MethodScriptError.unknownCommand)
            }
            program.instructions.append(MSInstruction(op: op, line: lineNo))
        }
        if !blocks.isEmpty {
            throw MethodScriptError(MethodScriptError.blockStructure, line: program.instructions[blocks.last!.index].line)
        }
        return program
    }

    private static func technique(
        _ command: String, _ args: [String],
        operand: (String) throws(MethodScriptError) -> MSOperand,
        variable: (String) throws(MethodScriptError) -> String,
        fail: (UInt16) -> MethodScriptError
    ) throws(MethodScriptError) -> MSTechnique {
        func need(_ n: Int) throws(MethodScriptError) {
            if args.count != n { throw fail(MethodScriptError.wrongArgumentCount) }
        }
        switch command {
        case "meas_loop_ocp":
            try need(3)
            return .ocp(e: try variable(args[0]), interval: try operand(args[1]), run: try operand(args[2]))
        case "meas_loop_ca":
            try need(5)
            return .ca(
                e: try variable(args[0]), i: try variable(args[1]), potential: try operand(args[2]),
                interval: try operand(args[3]), run: try operand(args[4]))
        case "meas_loop_cp":
            try need(5)
            return .cp(
                e: try variable(args[0]), i: try variable(args[1]), current: try operand(args[2]),
                interval: try operand(args[3]), run: try operand(args[4]))
        case "meas_loop_lsv":
            try need(6)
            return .lsv(
                e: try variable(args[0]), i: try variable(args[1]), begin: try operand(args[2]), end: try operand(args[3]),
                step: try operand(args[4]), rate: try operand(args[5]))
        case "meas_loop_cv":
            guard args.count == 7 || args.count == 8 else { throw fail(MethodScriptError.wrongArgumentCount) }
            var scans = 1
            if args.count == 8 {
                let a = args[7]
                guard a.hasPrefix("nscans("), a.hasSuffix(")"), let n = Int(a.dropFirst(7).dropLast()), n >= 1 else {
                    throw fail(MethodScriptError.invalidArgument)
                }
                scans = n
            }
            return .cv(
                e: try variable(args[0]), i: try variable(args[1]), begin: try operand(args[2]), v1: try operand(args[3]),
                v2: try operand(args[4]), step: try operand(args[5]), rate: try operand(args[6]), scans: scans)
        default:
            try need(8)
            return .eis(
                f: try variable(args[0]), zr: try variable(args[1]), zi: try variable(args[2]), amplitude: try operand(args[3]),
                fStart: try operand(args[4]), fEnd: try operand(args[5]), points: try operand(args[6]), dc: try operand(args[7]))
        }
    }
}
