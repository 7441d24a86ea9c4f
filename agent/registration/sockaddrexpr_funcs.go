package registration

import (
	sockaddr "github.com/hashicorp/go-sockaddr"
)

// valueKind is the type of a pipeline's value. Every go-sockaddr template
// function has fixed parameter and result types, so a template is
// type-checked before it runs: a mistake is reported at start-up, where
// text/template would only find it when the address is needed.
type valueKind int

const (
	kindString  valueKind = iota + 1 // string
	kindNumber                       // an integer literal, printed as an int
	kindIfAddrs                      // sockaddr.IfAddrs
)

func (k valueKind) String() string {
	switch k {
	case kindString:
		return "a string"
	case kindNumber:
		return "a number"
	}
	return "interface addresses"
}

// paramKind is what a function parameter accepts.
type paramKind int

const (
	paramString  paramKind = iota + 1
	paramInt               // an integer literal (text/template's IsInt)
	paramUint              // an integer literal (text/template's IsUint)
	paramIfAddrs           // interface addresses: ".", a source, or a pipeline
)

func (k paramKind) String() string {
	switch k {
	case paramString:
		return "a string"
	case paramInt:
		return "an integer"
	case paramUint:
		return "a non-negative integer"
	}
	return "interface addresses"
}

// exprFunc is one function of go-sockaddr/template's function maps, bound
// to the non-template go-sockaddr function it calls there. When a function
// is a later stage of a pipeline, the value piped in is its last argument.
type exprFunc struct {
	params []paramKind
	result valueKind
	call   func(args []any) (any, error)
}

// lookupFunc maps the names of SourceFuncs, SortFuncs, FilterFuncs and
// HelperFuncs (go-sockaddr v1.0.7) to their functions; that is all of them.
func lookupFunc(name string) (exprFunc, bool) {
	switch name {
	// SourceFuncs
	case "GetAllInterfaces":
		return source(sockaddr.GetAllInterfaces), true
	case "GetDefaultInterfaces":
		return source(sockaddr.GetDefaultInterfaces), true
	case "GetPrivateInterfaces":
		return source(sockaddr.GetPrivateInterfaces), true
	case "GetPublicInterfaces":
		return source(sockaddr.GetPublicInterfaces), true

	// SortFuncs, FilterFuncs
	case "sort":
		return exprFunc{[]paramKind{paramString, paramIfAddrs}, kindIfAddrs, func(a []any) (any, error) {
			return sockaddr.SortIfBy(a[0].(string), a[1].(sockaddr.IfAddrs))
		}}, true
	case "include":
		return exprFunc{[]paramKind{paramString, paramString, paramIfAddrs}, kindIfAddrs, func(a []any) (any, error) {
			return sockaddr.IncludeIfs(a[0].(string), a[1].(string), a[2].(sockaddr.IfAddrs))
		}}, true
	case "exclude":
		return exprFunc{[]paramKind{paramString, paramString, paramIfAddrs}, kindIfAddrs, func(a []any) (any, error) {
			return sockaddr.ExcludeIfs(a[0].(string), a[1].(string), a[2].(sockaddr.IfAddrs))
		}}, true

	// HelperFuncs
	case "attr":
		// template.Attr also takes a single IfAddr, which no function here
		// returns, so only IfAddrs reach it.
		return exprFunc{[]paramKind{paramString, paramIfAddrs}, kindString, func(a []any) (any, error) {
			return sockaddr.IfAttrs(a[0].(string), a[1].(sockaddr.IfAddrs))
		}}, true
	case "join":
		return exprFunc{[]paramKind{paramString, paramString, paramIfAddrs}, kindString, func(a []any) (any, error) {
			return sockaddr.JoinIfAddrs(a[0].(string), a[1].(string), a[2].(sockaddr.IfAddrs))
		}}, true
	case "limit":
		return exprFunc{[]paramKind{paramUint, paramIfAddrs}, kindIfAddrs, func(a []any) (any, error) {
			return sockaddr.LimitIfAddrs(uint(a[0].(exprNumber).u), a[1].(sockaddr.IfAddrs))
		}}, true
	case "offset":
		return exprFunc{[]paramKind{paramInt, paramIfAddrs}, kindIfAddrs, func(a []any) (any, error) {
			return sockaddr.OffsetIfAddrs(int(a[0].(exprNumber).i), a[1].(sockaddr.IfAddrs))
		}}, true
	case "unique":
		return exprFunc{[]paramKind{paramString, paramIfAddrs}, kindIfAddrs, func(a []any) (any, error) {
			return sockaddr.UniqueIfAddrsBy(a[0].(string), a[1].(sockaddr.IfAddrs))
		}}, true
	case "math":
		return exprFunc{[]paramKind{paramString, paramString, paramIfAddrs}, kindIfAddrs, func(a []any) (any, error) {
			return sockaddr.IfAddrsMath(a[0].(string), a[1].(string), a[2].(sockaddr.IfAddrs))
		}}, true
	case "GetPrivateIP":
		return helper(sockaddr.GetPrivateIP), true
	case "GetPrivateIPs":
		return helper(sockaddr.GetPrivateIPs), true
	case "GetPublicIP":
		return helper(sockaddr.GetPublicIP), true
	case "GetPublicIPs":
		return helper(sockaddr.GetPublicIPs), true
	case "GetInterfaceIP":
		return byName(sockaddr.GetInterfaceIP), true
	case "GetInterfaceIPs":
		return byName(sockaddr.GetInterfaceIPs), true
	}
	return exprFunc{}, false
}

func source(f func() (sockaddr.IfAddrs, error)) exprFunc {
	return exprFunc{nil, kindIfAddrs, func([]any) (any, error) { return f() }}
}

func helper(f func() (string, error)) exprFunc {
	return exprFunc{nil, kindString, func([]any) (any, error) { return f() }}
}

func byName(f func(string) (string, error)) exprFunc {
	return exprFunc{[]paramKind{paramString}, kindString, func(a []any) (any, error) { return f(a[0].(string)) }}
}
