// Keyless Azure OpenAI jobs on Azure Functions Flex Consumption (Rust custom handler).
//
// Everything authenticates with Microsoft Entra ID: the Function App's system-assigned
// managed identity talks to Storage, Azure OpenAI and Application Insights, and the accounts
// refuse shared-key / local authentication. Deployed by `azd up` (see azure.yaml, docs/deploy.md).
//
// Azure Verified Modules are used where they fit. Module versions are pinned to releases whose
// parameters were read from Azure/bicep-registry-modules; storage-account 0.12.0 and
// operational-insights/workspace 0.11.1 are the newest releases whose outputs do not read the
// accounts' access keys (later releases export them as secure outputs even when the keys are
// disabled). Role assignments live in app/rbac.bicep: they need the app's principal id, which
// exists only after the site, and the storage account must exist before the site.
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('Name of the azd environment; every resource name is derived from it.')
param environmentName string

@minLength(1)
@description('Region for every resource. It must offer Flex Consumption (and, unless openAiLocation is set, the model below).')
@metadata({ azd: { type: 'location' } })
param location string

@description('Region of the Azure OpenAI account, when the model is not offered in `location`.')
param openAiLocation string = location

@description('Object id of the principal running azd (azd sets AZURE_PRINCIPAL_ID). It gets Cognitive Services OpenAI User, to run the handler and `handler doctor` locally. Empty = no role for it.')
param principalId string = ''

@description('Kind of principalId: User for a person running azd, ServicePrincipal for a pipeline.')
@allowed([
  'User'
  'ServicePrincipal'
  'Group'
])
param principalType string = 'User'

@description('Also give principalId Storage Blob Data Contributor and Storage Queue Data Contributor on the storage account, to inspect and requeue jobs and results with `az storage ... --auth-mode login`.')
param grantPrincipalStorageAccess bool = true

@description('Chat model to deploy.')
param modelName string = 'gpt-4o-mini'

@description('Model version.')
param modelVersion string = '2024-07-18'

@description('Deployment SKU (GlobalStandard has the widest regional availability and the highest default quota).')
param modelSkuName string = 'GlobalStandard'

@description('Deployment capacity in units of 1,000 tokens per minute (quota permitting).')
@minValue(1)
param modelCapacity int = 30

@description('Name of the Azure OpenAI deployment (AZURE_OPENAI_DEPLOYMENT).')
param modelDeploymentName string = modelName

@description('AZURE_OPENAI_API_VERSION: dated GA api-version, or `v1` for the /openai/v1 route.')
param openAiApiVersion string = '2024-10-21'

@description('Flex Consumption scale-out limit of the Function App (current docs: 1..1000; older regions documented 40 as the floor). It also divides the token budget: see AOAI_TOKENS_PER_MINUTE in app/function.bicep.')
@minValue(1)
@maxValue(1000)
param maximumInstanceCount int = 10

@description('Memory of each Flex Consumption instance.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('AOAI_MAX_CONCURRENCY: Azure OpenAI calls in flight per instance.')
@minValue(1)
@maxValue(256)
param aoaiMaxConcurrency int = 8

@description('LOG_FORMAT of the handler in Azure: json lines are easy to query in Application Insights (traces | extend j = parse_json(message)).')
@allowed([
  'text'
  'json'
])
param logFormat string = 'json'

var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = { 'azd-env-name': environmentName }

var functionAppName = 'func-${resourceToken}'
var storageAccountName = 'st${resourceToken}'
var openAiAccountName = 'oai-${resourceToken}'

// Storage names used by the function.json bindings (tests/infra_consistency.rs checks them):
// process_job triggers on `jobs`, submit_jobs writes to `jobs`, process_job writes to the
// `results` queue and reads/writes blobs `results/{Id}.json`, get_job reads `results/{id}.json`;
// put_job (PUT /api/jobs/{id}) writes a large job to blob `inputs/{id}.json` and a reference to
// `jobs`, and process_job reads `inputs/{Id}.json` back.
// The host moves a message that failed maxDequeueCount times to `jobs-poison`; creating it here
// is what lets the app do without queue-management rights (see app/rbac.bicep).
var jobsQueueName = 'jobs'
var jobsPoisonQueueName = 'jobs-poison'
var resultsQueueName = 'results'
var resultsContainerName = 'results'
var inputsContainerName = 'inputs'
// Flex Consumption keeps the deployed package (dist/app.zip) in this container.
var deploymentContainerName = 'app-package'

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: 'rg-${environmentName}'
  location: location
  tags: tags
}

module storage 'br/public:avm/res/storage/storage-account:0.12.0' = {
  name: 'storage'
  scope: rg
  params: {
    name: storageAccountName
    location: location
    tags: tags
    kind: 'StorageV2'
    skuName: 'Standard_LRS'
    // Entra ID only: the host, the bindings and people all use RBAC data roles.
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    allowBlobPublicAccess: false
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    dnsEndpointType: 'Standard'
    // Flex Consumption without VNet integration reaches storage over its public endpoint.
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
    blobServices: {
      containers: [
        { name: deploymentContainerName, publicAccess: 'None' }
        { name: resultsContainerName, publicAccess: 'None' }
        { name: inputsContainerName, publicAccess: 'None' }
      ]
    }
    queueServices: {
      queues: [
        { name: jobsQueueName }
        { name: jobsPoisonQueueName }
        { name: resultsQueueName }
      ]
    }
  }
}

module logAnalytics 'br/public:avm/res/operational-insights/workspace:0.11.1' = {
  name: 'log-analytics'
  scope: rg
  params: {
    name: 'log-${resourceToken}'
    location: location
    tags: tags
    skuName: 'PerGB2018'
    dataRetention: 30
  }
}

module appInsights 'br/public:avm/res/insights/component:0.8.0' = {
  name: 'app-insights'
  scope: rg
  params: {
    name: 'appi-${resourceToken}'
    location: location
    tags: tags
    kind: 'web'
    applicationType: 'web'
    workspaceResourceId: logAnalytics.outputs.resourceId
    // Entra ID ingestion only: the app sends telemetry as its identity (Monitoring Metrics
    // Publisher, app/rbac.bicep) with APPLICATIONINSIGHTS_AUTHENTICATION_STRING=Authorization=AAD.
    disableLocalAuth: true
    retentionInDays: 30
  }
}

module openAi 'br/public:avm/res/cognitive-services/account:0.18.0' = {
  name: 'openai'
  scope: rg
  params: {
    name: openAiAccountName
    location: openAiLocation
    tags: tags
    kind: 'OpenAI'
    sku: 'S0'
    // Token authentication needs the custom subdomain (https://<name>.openai.azure.com).
    customSubDomainName: openAiAccountName
    // Entra ID only: requests must carry a bearer token; the account issues no usable API key.
    disableLocalAuth: true
    // The module's default is Disabled when no network ACLs are given; this app calls the
    // public endpoint (no VNet), so enable it explicitly.
    publicNetworkAccess: 'Enabled'
    deployments: [
      {
        name: modelDeploymentName
        model: {
          format: 'OpenAI'
          name: modelName
          version: modelVersion
        }
        sku: {
          name: modelSkuName
          capacity: modelCapacity
        }
        // The version is pinned; move only when Azure retires it.
        versionUpgradeOption: 'OnceCurrentVersionExpired'
      }
    ]
  }
}

module functionApp 'app/function.bicep' = {
  name: 'function'
  scope: rg
  params: {
    name: functionAppName
    location: location
    tags: tags
    storageAccountName: storage.outputs.name
    deploymentContainerName: deploymentContainerName
    appInsightsName: appInsights.outputs.name
    openAiEndpoint: openAi.outputs.endpoint
    openAiDeploymentName: modelDeploymentName
    openAiApiVersion: openAiApiVersion
    modelCapacity: modelCapacity
    maximumInstanceCount: maximumInstanceCount
    instanceMemoryMB: instanceMemoryMB
    aoaiMaxConcurrency: aoaiMaxConcurrency
    logFormat: logFormat
  }
}

module rbac 'app/rbac.bicep' = {
  name: 'rbac'
  scope: rg
  params: {
    storageAccountName: storage.outputs.name
    jobsQueueName: jobsQueueName
    jobsPoisonQueueName: jobsPoisonQueueName
    resultsQueueName: resultsQueueName
    openAiAccountName: openAi.outputs.name
    appInsightsName: appInsights.outputs.name
    appPrincipalId: functionApp.outputs.principalId
    userPrincipalId: principalId
    userPrincipalType: principalType
    grantUserStorageAccess: grantPrincipalStorageAccess
  }
}

// Outputs: azd stores them in .azure/<env>/.env (`azd env get-values`), so the handler and
// `handler doctor` can run locally against the deployed resources with the Azure CLI credential.
output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_APP_NAME string = functionApp.outputs.name
output AZURE_FUNCTION_APP_URL string = 'https://${functionApp.outputs.defaultHostname}'
output AZURE_FUNCTION_APP_PRINCIPAL_ID string = functionApp.outputs.principalId
output AZURE_STORAGE_ACCOUNT string = storage.outputs.name
output AZURE_STORAGE_BLOB_ENDPOINT string = storage.outputs.serviceEndpoints.blob
output AZURE_STORAGE_QUEUE_ENDPOINT string = storage.outputs.serviceEndpoints.queue
output AZURE_OPENAI_ACCOUNT string = openAi.outputs.name
output AZURE_OPENAI_ENDPOINT string = openAi.outputs.endpoint
output AZURE_OPENAI_DEPLOYMENT string = modelDeploymentName
output AZURE_OPENAI_API_VERSION string = openAiApiVersion
output AOAI_TOKENS_PER_MINUTE string = functionApp.outputs.tokensPerMinutePerInstance
output APPLICATIONINSIGHTS_NAME string = appInsights.outputs.name
