// The Flex Consumption plan and the Function App running the Rust custom handler.
//
// Identity: system-assigned only. With no user-assigned identity on the app, every
// identity-based connection below omits `clientId`, and the handler (AZURE_CLIENT_ID unset)
// asks the platform's identity endpoint for the system-assigned identity's tokens.

param name string
param location string
param tags object

param storageAccountName string
param deploymentContainerName string
param appInsightsName string

param openAiEndpoint string
param openAiDeploymentName string
param openAiApiVersion string

@minValue(1)
@maxValue(1000)
param maximumInstanceCount int

@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

param aoaiMaxConcurrency int
param logFormat string

resource storageAccount 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: appInsightsName
}

// No setting depends on the instance count: every instance paces itself from the deployment's
// own remaining-quota headers and 429s (docs/operations.md, "One deployment, many instances"),
// so 1 or maximumInstanceCount instances together use the deployment's quota. The optional
// per-instance cap (0 = none) is for an app that shares the deployment with other apps.
param aoaiTokensPerMinute int

// Every setting the handler reads that applies in Azure (handler::config::SETTINGS); the ones
// left out are listed, with the reason, in tests/infra_consistency.rs (AZURE_ONLY_ABSENT).
// FUNCTIONS_WORKER_RUNTIME and FUNCTIONS_EXTENSION_VERSION are deliberately absent: Flex
// Consumption deprecates both (the runtime is functionAppConfig.runtime below, the host version
// is managed by the platform).
var appSettings = {
  // Host storage and every binding's `connection: AzureWebJobsStorage`, identity-based: the
  // service URIs plus `credential: managedidentity`, and no `clientId` (system-assigned).
  AzureWebJobsStorage__blobServiceUri: storageAccount.properties.primaryEndpoints.blob
  AzureWebJobsStorage__queueServiceUri: storageAccount.properties.primaryEndpoints.queue
  AzureWebJobsStorage__credential: 'managedidentity'

  // Application Insights with local auth disabled: ingestion as the app's identity.
  // `Authorization=AAD` without `ClientId=` selects the system-assigned identity.
  APPLICATIONINSIGHTS_CONNECTION_STRING: appInsights.properties.ConnectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'Authorization=AAD'

  // The handler (see docs/api.md and handlers/config.rs).
  AZURE_OPENAI_ENDPOINT: openAiEndpoint
  AZURE_OPENAI_DEPLOYMENT: openAiDeploymentName
  AZURE_OPENAI_API_VERSION: openAiApiVersion
  // Pin the credential: in Azure only the managed identity is right; never fall back to a CLI.
  AZURE_TOKEN_CREDENTIALS: 'ManagedIdentityCredential'
  AOAI_MAX_CONCURRENCY: string(aoaiMaxConcurrency)
  AOAI_TOKENS_PER_MINUTE: string(aoaiTokensPerMinute)
  AOAI_REQUEST_TIMEOUT_SECONDS: '60'
  AOAI_MAX_RETRY_WAIT_SECONDS: '30'
  // A quarter of the instance's memory for large batch submits at once (docs/reliability.md).
  INVOCATION_MEMORY_BUDGET_MB: string(instanceMemoryMB / 4)
  LOG_FORMAT: logFormat
  // Names the service in OpenTelemetry data if an OTLP endpoint is ever configured.
  OTEL_SERVICE_NAME: name
}

module plan 'br/public:avm/res/web/serverfarm:0.7.0' = {
  name: 'plan'
  params: {
    name: 'plan-${name}'
    location: location
    tags: tags
    skuName: 'FC1'
    kind: 'functionapp'
    // Linux.
    reserved: true
    zoneRedundant: false
  }
}

module site 'br/public:avm/res/web/site:0.24.0' = {
  name: 'site'
  params: {
    name: name
    location: location
    // azd finds the app to deploy the `api` service to by this tag.
    tags: union(tags, { 'azd-service-name': 'api' })
    kind: 'functionapp,linux'
    serverFarmResourceId: plan.outputs.resourceId
    httpsOnly: true
    clientAffinityEnabled: false
    managedIdentities: {
      systemAssigned: true
    }
    siteConfig: {
      alwaysOn: false
      minTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storageAccount.properties.primaryEndpoints.blob}${deploymentContainerName}'
          authentication: {
            type: 'SystemAssignedIdentity'
          }
        }
      }
      scaleAndConcurrency: {
        instanceMemoryMB: instanceMemoryMB
        maximumInstanceCount: maximumInstanceCount
      }
      runtime: {
        name: 'custom'
        version: '1.0'
      }
    }
    configs: [
      {
        name: 'appsettings'
        // Bicep is the source of truth: do not merge in settings someone added by hand (and so
        // skip the module's read of the current settings).
        retainCurrentAppSettings: false
        properties: appSettings
      }
    ]
    // Deployments use Entra ID (azd / az send a bearer token); no basic-auth publishing.
    basicPublishingCredentialsPolicies: [
      { name: 'ftp', allow: false }
      { name: 'scm', allow: false }
    ]
  }
}

output name string = site.outputs.name
output resourceId string = site.outputs.resourceId
output defaultHostname string = site.outputs.defaultHostname
// Always set: the site has systemAssigned: true.
output principalId string = site.outputs.?systemAssignedMIPrincipalId ?? ''
